"""megatron_cogview/finetune/caption_model.py (and its root shim finetune/caption_model.py): image-to-text
fine-tuning from the text-to-image shards and checkpoint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from data_utils.shards import TokenSample
from megatron_cogview.finetune.caption_model import image_to_text_sample, to_image_to_text
from tests.training.data import GRID, LAYOUT, SEQ_LEN, make_dataset, records
from tests.training.runner import ROOT, base_args, env, losses, train
from tokenization.unified import split_sequence


def test_reordering_keeps_text_and_image() -> None:
    for rec in list(records(5)):
        tokens, positions = to_image_to_text(rec.tokens, LAYOUT)
        assert tokens.shape == rec.tokens.shape == (SEQ_LEN,)
        before = {p.kind: p.ids.tolist() for p in split_sequence(LAYOUT, rec.tokens) if p.kind != "command"}
        parts = split_sequence(LAYOUT, tokens)
        after = {p.kind: p.ids.tolist() for p in parts if p.kind != "command"}
        assert before == after
        names = [p.name(LAYOUT) for p in parts if p.kind == "command"]
        assert names[:4] == ["[BASE]", "[BOI1]", "[EOI1]", "[ROI1]"]
        assert [p.kind for p in parts][:3] == ["command", "command", "image"]
        assert np.array_equal(positions[: len(tokens)], np.arange(SEQ_LEN))


def _known_records(n: int) -> dict[str, tuple[list[int], np.ndarray]]:
    """Key -> (text ids, image codes) of n text-to-image samples with varied text lengths."""
    rng = np.random.default_rng(3)
    out = {}
    for i in range(n):
        text = rng.integers(0, 100, size=int(rng.integers(1, 7))).tolist()
        out[f"k{i:03d}"] = text, rng.integers(0, 64, size=GRID)
    return out


def test_sample_transform_builds_image_to_text_from_the_sample_itself(tmp_path: Path) -> None:
    """Through the loader (worker processes, before collate): every row is image_to_text of that sample's own
    text and codes, shifted into tokens/labels/positions."""
    from data_utils.loader import build_loader
    from data_utils.writer import TokenRecord, write_token_dataset
    from tokenization.templates import image_to_text, text_to_image

    known = _known_records(24)
    recs = [TokenRecord(key=k, tokens=(s := text_to_image(LAYOUT, t, c, SEQ_LEN)).tokens, position_ids=s.position_ids)
            for k, (t, c) in known.items()]
    data = str(tmp_path / "data")
    write_token_dataset(data, recs, layout=LAYOUT, seq_len=SEQ_LEN, samples_per_shard=8)
    one = image_to_text_sample(TokenSample("k000", recs[0].tokens, recs[0].position_ids, "c", {"m": 1}), LAYOUT)
    assert (one.key, one.caption, one.meta) == ("k000", "c", {"m": 1})
    seen = 0
    for batch in build_loader(data, 0, 1, batch_size=5, num_workers=2, num_epochs=1, transform=image_to_text_sample):
        for row, key in enumerate(batch["keys"]):
            text, codes = known[key.split("/")[-1]]
            ref = image_to_text(LAYOUT, codes, text, SEQ_LEN)
            assert np.array_equal(batch["tokens"][row].numpy(), ref.tokens[:-1])
            assert np.array_equal(batch["labels"][row].numpy(), ref.tokens[1:])
            assert np.array_equal(batch["position_ids"][row].numpy(), ref.position_ids[:-1])
            seen += 1
    assert seen == len(known)


def test_caption_model_finetunes_from_pretrained(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=128, samples_per_shard=32)
    train(base_args(data, str(tmp_path / "t2i"), 10))
    args = base_args(data, str(tmp_path / "cap"), 10, "--finetune-from", str(tmp_path / "t2i"))
    proc = subprocess.run([sys.executable, "-m", "finetune.caption_model", *args], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning from the weights of" in proc.stdout
    l = losses(tmp_path / "cap")
    assert l[10] < l[1]
    # a checkpoint of another shape is refused in one line
    bad = base_args(data, str(tmp_path / "bad"), 2, "--finetune-from", str(tmp_path / "t2i"), "--hidden-size", "32")
    proc = train(bad, check=False)
    assert proc.returncode == 2 and "does not fit this model" in proc.stderr


def _class_records(n: int, seed: int):
    """Captions fully determined by the image: class k has text [k, k+16, k+32] and its own code pattern."""
    from data_utils.writer import TokenRecord
    from tests.training.data import GRID
    from tokenization.templates import text_to_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(0, 16))
        codes = (np.arange(GRID) * (k + 1) + 5 * k) % 64
        seq = text_to_image(LAYOUT, [k, k + 16, k + 32], codes, SEQ_LEN)
        yield TokenRecord(key=f"c{i:05d}", tokens=seq.tokens, position_ids=seq.position_ids)


def test_post_selection_prefers_the_true_caption(tmp_path: Path) -> None:
    """A trained caption model scores each image's own caption better (lower CapLoss) than other captions."""
    import torch

    from data_utils.writer import write_token_dataset
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.generation.post_selection import CaptionTemplate, caption_loss
    from megatron_cogview.parallel import ParallelState

    data = str(tmp_path / "data")
    write_token_dataset(data, _class_records(256, 0), layout=LAYOUT, seq_len=SEQ_LEN, samples_per_shard=64)
    args = base_args(data, str(tmp_path / "cap"), 150, "--log-interval", "50")
    proc = subprocess.run([sys.executable, "-m", "megatron_cogview.finetune.caption_model", *args],
                          env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_model(tmp_path / "cap", ParallelState.single())
    recs = list(_class_records(24, seed=99))
    parts = [split_sequence(LAYOUT, r.tokens) for r in recs]
    images = torch.tensor(np.stack([[p for p in ps if p.kind == "image"][0].ids for ps in parts]))
    texts = [[p for p in ps if p.kind == "text"][0].ids.tolist() for ps in parts]
    template = CaptionTemplate(tuple(LAYOUT.command(c) for c in ("BASE", "BOI1")),
                               tuple(LAYOUT.command(c) for c in ("EOI1", "ROI1")))
    true = caption_loss(model, images, texts, template)
    shifted = texts[1:] + texts[:1]  # every image with the next sample's caption
    differs = torch.tensor([a != b for a, b in zip(texts, shifted)])
    wrong = caption_loss(model, images, shifted, template)
    assert differs.sum() >= 16
    assert bool((true[differs] < wrong[differs]).all()), (true, wrong)
