"""The original CogView release, end to end on tiny models built in its formats: import -> logits -> generate.

The released transformer files are `<dir>/<iteration>/mp_rank_00_model_states.pt` holding fp16 weights
under `module` (with FP16_Module's `module.` prefix). The reference forward below is written from the
original's layer order: Sandwich-LN, every LayerNorm input divided by the whole tensor's max|x| / 8, plain
softmax attention with a -10000 mask, tanh-GELU, tied output embedding.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_cogview import cli
from megatron_cogview.checkpoint.layout import read_meta
from megatron_cogview.checkpoint.load import load_model
from megatron_cogview.config import pad_vocab_size
from megatron_cogview.parallel import ParallelState
from tests.tokenization.test_original_vqvae import ReferenceVQVAE
from tokenization import templates
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer, train_text_tokenizer

torch.set_num_threads(1)
L, H, HEADS = 2, 64, 4  # the `tiny` preset's shape
CORPUS = ["a red car on the street", "a blue circle at the top left", "two dogs playing in the park",
          "an oil painting of a river", "一只可爱的小猫"] * 4


def _cli(*args: str) -> int:
    modules = cli.COMMAND_MODULES
    if "megatron_cogview.commands.convert" not in modules:
        modules = (*modules, "megatron_cogview.commands.convert")
    with mock.patch.object(cli, "COMMAND_MODULES", modules):
        return cli.main(list(args))


def original_state(rows: int, positions: int, seed: int) -> dict[str, torch.Tensor]:
    """Random fp16 weights under the original's names and shapes (no project code involved)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, std=0.1: (torch.randn(*shape, generator=g) * std)  # noqa: E731
    sd = {"word_embeddings.weight": rnd(rows, H), "transformer.position_embeddings.weight": rnd(positions, H)}
    for i in range(L):
        p = f"transformer.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm", "third_layernorm", "fourth_layernorm"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + rnd(H), rnd(H)
        sd[p + "attention.query_key_value.weight"], sd[p + "attention.query_key_value.bias"] = rnd(3 * H, H), rnd(3 * H)
        sd[p + "attention.dense.weight"], sd[p + "attention.dense.bias"] = rnd(H, H), rnd(H)
        sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"] = rnd(4 * H, H), rnd(4 * H)
        sd[p + "mlp.dense_4h_to_h.weight"], sd[p + "mlp.dense_4h_to_h.bias"] = rnd(H, 4 * H), rnd(H)
    sd["transformer.final_layernorm.weight"], sd["transformer.final_layernorm.bias"] = 1 + rnd(H), rnd(H)
    return {k: v.half() for k, v in sd.items()}


def write_release(root: Path, sd: dict[str, torch.Tensor], iteration: int = 142000) -> Path:
    """The released directory layout: tracker file + <iteration>/mp_rank_00_model_states.pt."""
    (root / str(iteration)).mkdir(parents=True)
    module = {f"module.{k}": v for k, v in sd.items()}  # FP16_Module prefix
    torch.save({"module": module, "iteration": iteration}, root / str(iteration) / "mp_rank_00_model_states.pt")
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return root


def reference_logits(sd: dict[str, torch.Tensor], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The original forward in fp64 (layer order of its GPT2ParallelTransformerLayer)."""
    w = {k: v.double() for k, v in sd.items()}

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        x = x / (x.abs().max() / 8)  # the release's LayerNorm: whole-tensor max
        return F.layer_norm(x, (H,), w[name + ".weight"], w[name + ".bias"], 1e-5)

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ w[name + ".weight"].t() + w[name + ".bias"]

    b, s = tokens.shape
    d = H // HEADS
    mask = torch.ones(s, s, dtype=torch.float64).tril()
    x = w["word_embeddings.weight"][tokens] + w["transformer.position_embeddings.weight"][positions]
    for i in range(L):
        p = f"transformer.layers.{i}."
        q, k, v = lin(ln(x, p + "input_layernorm"), p + "attention.query_key_value").chunk(3, dim=-1)
        q, k, v = (t.view(b, s, HEADS, d).transpose(1, 2) for t in (q, k, v))
        scores = (q / math.sqrt(d)) @ k.transpose(-1, -2)
        scores = scores * mask - 10000.0 * (1.0 - mask)
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, H)
        x = x + ln(lin(ctx, p + "attention.dense"), p + "third_layernorm")
        hmid = lin(ln(x, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")
        gelu = 0.5 * hmid * (1.0 + torch.tanh(0.7978845608028654 * hmid * (1.0 + 0.044715 * hmid * hmid)))
        x = x + ln(lin(gelu, p + "mlp.dense_4h_to_h"), p + "fourth_layernorm")
    return ln(x, "transformer.final_layernorm") @ w["word_embeddings.weight"].t()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Release files in the original formats: SentencePiece model, VQ-VAE .pt, base/caption/SR model dirs."""
    root = tmp_path_factory.mktemp("release")
    (root / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    sp = train_text_tokenizer([root / "corpus.txt"], root / "cog-pretrain", 120, character_coverage=1.0)
    torch.manual_seed(0)
    vq = ReferenceVQVAE(ch=16, d=8, k=32).eval()
    torch.save(vq.state_dict(), root / "vqvae_hard_biggerset_011.pt")
    layout = TokenLayout(num_image_tokens=32, num_text_tokens=TextTokenizer(sp).vocab_size)
    rows = pad_vocab_size(layout.num_tokens, 1)
    sds = {"base": original_state(rows, 128, 1), "caption": original_state(rows, 128, 2), "sr": original_state(rows, 160, 3)}
    dirs = {name: write_release(root / f"cogview-{name}", sd) for name, sd in sds.items()}
    assert _cli("tokenizer", "import-vqvae", str(root / "vqvae_hard_biggerset_011.pt"), "--out", str(root / "vqvae"),
                "--image-size", "32") == 0
    return {"root": root, "sp": sp, "layout": layout, "sd": sds, "dirs": dirs, "vqvae": root / "vqvae"}


def _import(release: dict, name: str, task: str, out: Path, *extra: str) -> int:
    return _cli("convert", "--from", "cogview-original", "--load", str(release["dirs"][name]), "--preset", "tiny",
                "--task", task, "--text-tokenizer", str(release["sp"]), "--image-tokenizer", str(release["vqvae"]),
                "--save", str(out), *extra)


def test_base_import_logits_equal_the_original_forward(release: dict, tmp_path: Path) -> None:
    assert _import(release, "base", "text2image", tmp_path / "base") == 0
    model, meta = load_model(tmp_path / "base", ParallelState.single())
    c = model.config
    assert (c.pb_relax_layernorm, c.pb_relax_ln_target, c.max_position_embeddings) == ("all", 8.0, 128)
    assert meta.tokenizers["task"] == "text2image" and meta.extra["source_format"] == "cogview-original"
    layout: TokenLayout = release["layout"]  # type: ignore[assignment]
    assert meta.tokenizers["layout"] == layout.to_dict() and meta.tokenizers["num_tokens"] == layout.num_tokens
    tokens = torch.randint(0, layout.num_tokens, (2, 40), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(40).unsqueeze(0).expand(2, 40)
    with torch.no_grad():
        got = model.eval()(tokens, positions)
    expected = reference_logits(release["sd"]["base"], tokens, positions)  # type: ignore[index]
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    plain = load_model(tmp_path / "base", ParallelState.single())[0].eval()
    plain.transformer.final_layernorm.pb_relax = False  # the test can fail: without the rescale logits move
    for layer in plain.transformer.layers:
        for ln in (layer.input_layernorm, layer.post_attention_layernorm, layer.third_layernorm, layer.fourth_layernorm):
            ln.pb_relax = False
    with torch.no_grad():
        assert not torch.allclose(plain(tokens, positions).double(), expected, rtol=1e-4, atol=1e-4)


def test_super_resolution_import_keeps_the_longer_position_table(release: dict, tmp_path: Path) -> None:
    assert _import(release, "sr", "superres", tmp_path / "sr") == 0
    model, meta = load_model(tmp_path / "sr", ParallelState.single())
    assert model.config.max_position_embeddings == 160
    assert (meta.tokenizers["task"], meta.tokenizers["image_size"]) == ("superres", 32)  # what --super-resolution reads
    layout: TokenLayout = release["layout"]  # type: ignore[assignment]
    seq = templates.super_resolution(layout, [5, 6, 7], np.arange(4) % 32, np.arange(16) % 32, 36)
    tokens = torch.from_numpy(seq.tokens).unsqueeze(0)
    positions = torch.from_numpy(seq.position_ids).unsqueeze(0)  # restart at [ROI2]
    assert positions[0, -1] < positions.shape[1] - 1
    long_positions = torch.arange(124, 160).unsqueeze(0)  # rows beyond the base table
    with torch.no_grad():
        for pos in (positions, long_positions):
            expected = reference_logits(release["sd"]["sr"], tokens, pos)  # type: ignore[index]
            torch.testing.assert_close(model.eval()(tokens, pos).double(), expected, rtol=1e-4, atol=1e-4)


def test_generate_with_imported_base_caption_and_sr_models(release: dict, tmp_path: Path) -> None:
    assert _import(release, "base", "text2image", tmp_path / "base") == 0
    assert _import(release, "caption", "image2text", tmp_path / "cap") == 0
    assert _import(release, "sr", "superres", tmp_path / "sr") == 0
    assert read_meta(tmp_path / "cap")[1].tokenizers["task"] == "image2text"
    out = tmp_path / "samples"
    assert _cli("generate", "text2image", "--load", str(tmp_path / "base"), "--caption-model", str(tmp_path / "cap"),
                "--super-resolution", str(tmp_path / "sr"), "--prompt", "a red car", "--num-samples", "3",
                "--keep", "2", "--top-k", "20", "--device", "cpu", "--out", str(out)) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and [r["rank"] for r in records] == [0, 1]
    assert records[0]["caption_loss"] <= records[1]["caption_loss"]
    from PIL import Image

    with Image.open(out / records[0]["file"]) as im:
        assert im.size == (32, 32)  # decoded by the imported release VQ-VAE
    magnified = sorted(out.rglob("*.x2.png"))
    assert len(magnified) == 2
    with Image.open(magnified[0]) as im:
        assert im.size == (64, 64)  # 4x4 codes magnified to 8x8 by the imported SR model
    assert _cli("generate", "text2image", "--load", str(tmp_path / "base"), "--super-resolution", str(tmp_path / "cap"),
                "--prompt", "a red car", "--device", "cpu", "--out", str(tmp_path / "x")) == 2  # not an SR model


def _one_line(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_inputs_are_one_line_exit_2(release: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["convert", "--from", "cogview-original", "--load", str(release["dirs"]["base"])]
    assert _cli(*args, "--preset", "demo", "--save", str(tmp_path / "a")) == 2  # 4 x 128 preset, 2 x 64 file
    _one_line(capsys, "pass the matching --preset")
    sd = dict(release["sd"]["base"])  # type: ignore[call-overload]
    del sd["transformer.layers.1.fourth_layernorm.bias"]
    broken = write_release(tmp_path / "broken", sd)
    assert _cli("convert", "--from", "cogview-original", "--load", str(broken), "--preset", "tiny",
                "--save", str(tmp_path / "b")) == 2
    _one_line(capsys, "missing ['transformer.layers.1.fourth_layernorm.bias']")
    vq = write_release(tmp_path / "vq", torch.load(release["root"] / "vqvae_hard_biggerset_011.pt"))  # type: ignore[operator]
    assert _cli("convert", "--from", "cogview-original", "--load", str(vq), "--preset", "tiny",
                "--save", str(tmp_path / "f")) == 2  # the VQ-VAE file where a transformer belongs
    _one_line(capsys, "is not a CogView transformer checkpoint")
    assert _cli("convert", "--from", "cogview-original", "--load", str(release["root"]), "--preset", "tiny",
                "--save", str(tmp_path / "c")) == 2  # the release root itself: no tracker file
    _one_line(capsys, "not a checkpoint directory")
    assert _cli(*args, "--preset", "tiny", "--text-tokenizer", str(release["sp"]), "--save", str(tmp_path / "d")) == 2
    _one_line(capsys, "pass both --text-tokenizer and --image-tokenizer")
    assert _cli("convert", "--load", str(release["dirs"]["base"]), "--task", "superres", "--save", str(tmp_path / "e")) == 2
    _one_line(capsys, "only apply with --from cogview-original")
    assert not any((tmp_path / n).exists() for n in "abcdef")
