"""Caption-free style data: `cogview preprocess --style NAME` / `--style-from-folders` and their bad inputs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_utils.loader import build_loader
from data_utils.remote import iter_shard
from data_utils.shards import Manifest
from megatron_cogview.cli import main
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer
from tokenization.unified import split_sequence


def _images(folder: Path, names: list[str], synth_dir: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    src = sorted(os.listdir(os.path.join(synth_dir, "images")))
    for i, name in enumerate(names):
        shutil.copy(os.path.join(synth_dir, "images", src[i]), folder / name)


def _texts(out: Path, sp_model: str) -> dict[str, str]:
    """Key -> decoded caption of every stored sample (read back from the shards)."""
    m = Manifest.load(str(out))
    layout, text = TokenLayout.from_dict(m.layout), TextTokenizer(sp_model)
    got = {}
    for shard in m.shard_paths():
        for raw in iter_shard(shard):
            from data_utils.shards import decode_sample

            sample = decode_sample(raw, m.seq_len)
            ids = [p for p in split_sequence(layout, sample.tokens) if p.kind == "text"][0].raw(layout)
            got[sample.key] = text.decode(ids.tolist())
    return got


def _pre(tokenizers: tuple[str, str], out: Path, *extra: str) -> list[str]:
    return ["preprocess", "--text-tokenizer", tokenizers[0], "--image-tokenizer", tokenizers[1], "--out", str(out),
            "--seq-len", "64", *extra]


def test_one_style_for_a_caption_free_folder(tokenizers, synth_dir, tmp_path, capsys):
    _images(tmp_path / "sketch", ["a.png", "b.png", "c.png"], synth_dir)
    out = tmp_path / "shards"
    assert main(_pre(tokenizers, out, str(tmp_path / "sketch"), "--style", "sketch",
                     "--caption-template", "a {style} picture")) == 0
    assert "'a sketch picture' x 3" in capsys.readouterr().out
    texts = _texts(out, tokenizers[0])
    assert len(texts) == 3
    # the stored text is exactly what the tokenizer makes of the templated caption
    sp = TextTokenizer(tokenizers[0])
    assert set(texts.values()) == {sp.decode(sp.encode("a sketch picture"))}
    assert Manifest.load(str(out)).settings["styles"]["style"] == "sketch"


def test_one_folder_per_style_and_weighted_mixing(tokenizers, synth_dir, tmp_path, capsys):
    _images(tmp_path / "styles" / "oil_painting", ["a.png", "b.png"], synth_dir)
    _images(tmp_path / "styles" / "cartoon", ["c.png", "d.png", "e.png", "f.png"], synth_dir)
    out = tmp_path / "shards"
    assert main(_pre(tokenizers, out, str(tmp_path / "styles"), "--style-from-folders")) == 0
    sp = TextTokenizer(tokenizers[0])
    texts = _texts(out, tokenizers[0])
    want = {k: sp.decode(sp.encode(f"An image of {s} style")) for k, s in (("cartoon", "cartoon"), ("oil_painting", "oil painting"))}
    assert len(texts) == 6
    for key, caption in texts.items():
        assert caption == want["cartoon" if key.startswith("cartoon") else "oil_painting"], key
    assert sum(k.startswith("cartoon") for k in texts) == 4
    # the style set mixes with the general data by the loader's weights (about 3:1 here)
    general = tmp_path / "general"
    assert main(_pre(tokenizers, general, os.path.join(synth_dir, "captions.jsonl"))) == 0
    m = Manifest.load(str(out))
    loader = build_loader([str(general), str(out)], 0, 1, weights=[1.0, 3.0], batch_size=8, seed=0,
                          layout_fingerprint=m.layout_fingerprint, text_tokenizer_fingerprint=m.text_tokenizer_fingerprint,
                          image_tokenizer_fingerprint=m.image_tokenizer_fingerprint, seq_len=m.seq_len)
    keys = [k for _, batch in zip(range(50), loader) for k in batch["keys"]]
    style_share = np.mean([k.split("/", 1)[1] in texts for k in keys])  # loader keys are SHARD/KEY
    assert 0.65 < style_share < 0.85, style_share


@pytest.mark.parametrize("case, extra, message", [
    ("empty", ["--style", "sketch"], "has no images"),
    ("template", ["--style", "sketch", "--caption-template", "An image"], "must contain {style}"),
    ("template2", ["--style", "sketch", "--caption-template", "{style} by {artist}"], "must contain {style}"),
    ("both", ["--style", "sketch", "--style-from-folders"], "exactly one of --style"),
    ("orphan", ["--caption-template", "An image of {style} style"], "needs --style"),
    ("emptystyle", ["--style-from-folders"], "has no images; add images or remove it"),
])
def test_bad_style_inputs_one_line_exit_2(tokenizers, synth_dir, tmp_path, capsys, case, extra, message):
    folder = tmp_path / "in"
    if case == "emptystyle":
        _images(folder / "cartoon", ["a.png"], synth_dir)
        (folder / "sketch").mkdir()
    elif case != "empty":
        _images(folder, ["a.png"], synth_dir)
    else:
        folder.mkdir()
    assert main(_pre(tokenizers, tmp_path / "out", str(folder), *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
