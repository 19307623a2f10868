"""`cogview preprocess`: round trip against the tokenizers, input formats, bad samples, resume."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_utils import preprocess as pp
from data_utils.errors import DataError
from data_utils.loader import build_loader
from data_utils.shards import Manifest
from tests.data_utils.helpers import preprocess_paths
from tokenization import templates
from tokenization.image import ImageTokenizer
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer


def _records(synth_dir: str, n: int | None = None) -> list[dict]:
    with open(os.path.join(synth_dir, "captions.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows[:n] if n else rows


def _load_all(out: str) -> dict[str, np.ndarray]:
    """Every stored sequence (labels appended back) by sample key, through the streaming loader."""
    seqs = {}
    for batch in build_loader(out, 0, 1, batch_size=16, num_epochs=1, shuffle_buffer=0, shuffle_shards=False):
        for key, tokens, labels in zip(batch["keys"], batch["tokens"], batch["labels"]):
            seqs[key.split("/")[-1]] = np.concatenate([tokens.numpy(), labels.numpy()[-1:]])
    return seqs


def _reference(tokenizers, rows: list[dict], synth_dir: str, seq_len: int, task: str = "text2image") -> dict:
    """Sequences built directly with the tokenizers and templates (what preprocess must store)."""
    text, image = TextTokenizer(tokenizers[0]), ImageTokenizer.from_pretrained(tokenizers[1])
    layout = TokenLayout(image.num_codes, text.vocab_size)
    out = {}
    for row in rows:
        img = Image.open(os.path.join(synth_dir, row["image"]))
        codes = image.encode(img)[0]
        ids = text.encode(row["caption"])
        if task == "text2image":
            seq = templates.text_to_image(layout, ids, codes, seq_len)
        elif task == "image2text":
            seq = templates.image_to_text(layout, codes, ids, seq_len)
        else:
            low = image.encode(img, image_size=image.image_size // 2)[0]
            seq = templates.super_resolution(layout, ids, low, codes, seq_len)
        out[row["key"]] = seq
    return out


def _run(tokenizers, inputs, out, **kwargs) -> Manifest:
    kwargs.setdefault("seq_len", 24)
    kwargs.setdefault("samples_per_shard", 16)
    return preprocess_paths(inputs if isinstance(inputs, list) else [inputs], *tokenizers, str(out), **kwargs)


def test_round_trip_equals_tokenizer_output(tokenizers, synth_dir, tmp_path):
    manifest = _run(tokenizers, os.path.join(synth_dir, "captions.jsonl"), tmp_path / "out")
    rows = _records(synth_dir)
    stored = _load_all(str(tmp_path / "out"))
    reference = _reference(tokenizers, rows, synth_dir, 24)
    assert set(stored) == set(reference) and len(stored) == len(rows) == manifest.num_samples
    for key, seq in reference.items():
        assert stored[key].tolist() == seq.tokens.tolist(), key
    assert manifest.text_tokenizer_fingerprint == TextTokenizer(tokenizers[0]).fingerprint()
    assert manifest.image_tokenizer_fingerprint == ImageTokenizer.from_pretrained(tokenizers[1]).fingerprint()
    with open(tmp_path / "out" / "dataset.json", encoding="utf-8") as f:
        on_disk = json.load(f)  # the keys dataset.json has always used
    assert on_disk["text_tokenizer"] == manifest.text_tokenizer_fingerprint
    assert on_disk["image_tokenizer"] == manifest.image_tokenizer_fingerprint
    assert Manifest.load(str(tmp_path / "out")).text_tokenizer_fingerprint == manifest.text_tokenizer_fingerprint
    assert all(s.samples == 16 for s in manifest.shards[:-1]) and manifest.seq_len == 24
    assert not os.path.exists(tmp_path / "out" / pp.PROGRESS_DIR)


def test_folder_and_img2dataset_tar_inputs_match_jsonl(tokenizers, synth_dir, tmp_path):
    rows = _records(synth_dir, 20)
    folder, tar_path = tmp_path / "folder", tmp_path / "pairs.tar"
    folder.mkdir()
    with tarfile.open(tar_path, "w") as tf:  # written with the standard library, as img2dataset's layout
        for row in rows:
            shutil.copy(os.path.join(synth_dir, row["image"]), folder / f"{row['key']}.png")
            (folder / f"{row['key']}.txt").write_text(row["caption"], encoding="utf-8")
            tf.add(str(folder / f"{row['key']}.png"), arcname=f"{row['key']}.png")
            tf.add(str(folder / f"{row['key']}.txt"), arcname=f"{row['key']}.txt")
            (tmp_path / "meta.json").write_text(json.dumps({"url": "x"}))
            tf.add(str(tmp_path / "meta.json"), arcname=f"{row['key']}.json")
    reference = _reference(tokenizers, rows, synth_dir, 24)
    for name, inputs in (("f", str(folder)), ("t", str(tar_path))):
        _run(tokenizers, inputs, tmp_path / name)
        stored = _load_all(str(tmp_path / name))
        assert {k: v.tolist() for k, v in stored.items()} == {k: s.tokens.tolist() for k, s in reference.items()}


def test_bad_samples_are_skipped_and_counted(tokenizers, synth_dir, tmp_path, capsys):
    rows = _records(synth_dir, 12)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    table = [{"image": os.path.join(synth_dir, r["image"]), "caption": r["caption"], "key": r["key"]} for r in rows]
    table += [
        {"image": str(tmp_path / "broken.png"), "caption": "a red circle", "key": "broken"},
        {"image": str(tmp_path / "missing.png"), "caption": "a red circle", "key": "missing"},
        {"image": table[0]["image"], "caption": "   ", "key": "empty"},
        {"image": table[0]["image"], "caption": " ".join(["a red circle at the top left"] * 20), "key": "long"},
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in table) + "\n")
    manifest = pp.preprocess(pp.PreprocessConfig((str(tmp_path / "in.jsonl"),), *tokenizers, str(tmp_path / "out"),
                                                 seq_len=24, samples_per_shard=5))
    stats = manifest.stats
    assert (stats["read"], stats["written"], stats["unreadable"], stats["empty_caption"]) == (16, 13, 2, 1)
    assert stats["truncated"] >= 1 and stats["truncated_pieces"] > 0
    assert "2 unreadable" in capsys.readouterr().out
    assert "long" in _load_all(str(tmp_path / "out"))


def test_interrupted_run_continues_and_matches_uninterrupted(tokenizers, synth_dir, tmp_path, monkeypatch):
    inputs = os.path.join(synth_dir, "captions.jsonl")
    _run(tokenizers, inputs, tmp_path / "clean")
    real_write = pp.write_shard

    def failing(out, prefix, index, *args):
        if index == 3:
            raise KeyboardInterrupt
        return real_write(out, prefix, index, *args)

    monkeypatch.setattr(pp, "write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        _run(tokenizers, inputs, tmp_path / "resumed")
    done = sorted(f for f in os.listdir(tmp_path / "resumed") if f.endswith(".tar"))
    assert done == ["data-000000.tar", "data-000001.tar", "data-000002.tar"]
    assert not [f for f in os.listdir(tmp_path / "resumed") if f.endswith(".partial")]
    first_mtime = os.stat(tmp_path / "resumed" / done[0]).st_mtime_ns
    monkeypatch.setattr(pp, "write_shard", real_write)
    _run(tokenizers, inputs, tmp_path / "resumed")
    assert os.stat(tmp_path / "resumed" / done[0]).st_mtime_ns == first_mtime  # not redone
    clean, resumed = Manifest.load(str(tmp_path / "clean")), Manifest.load(str(tmp_path / "resumed"))
    assert clean.shards == resumed.shards
    for shard in clean.shards:
        a = (tmp_path / "clean" / shard.name).read_bytes()
        assert a == (tmp_path / "resumed" / shard.name).read_bytes(), shard.name
    assert {k: v for k, v in clean.stats.items() if k != "seconds"} == {
        k: v for k, v in resumed.stats.items() if k != "seconds"
    }
    # a finished folder is left alone; other settings are refused
    _run(tokenizers, inputs, tmp_path / "resumed")
    with pytest.raises(DataError, match="other settings"):
        _run(tokenizers, inputs, tmp_path / "resumed", seq_len=30)


def test_parallel_workers_write_identical_shards(tokenizers, synth_dir, tmp_path):
    inputs = os.path.join(synth_dir, "captions.jsonl")
    _run(tokenizers, inputs, tmp_path / "serial", samples_per_shard=40)
    _run(tokenizers, inputs, tmp_path / "parallel", samples_per_shard=40, workers=2, batch_size=7)
    names = sorted(f for f in os.listdir(tmp_path / "serial") if f.endswith(".tar"))
    assert names == sorted(f for f in os.listdir(tmp_path / "parallel") if f.endswith(".tar"))
    for name in names:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


@pytest.mark.parametrize("task", ["image2text", "superres"])
def test_other_tasks_use_their_templates(tokenizers, synth_dir, tmp_path, task):
    rows = _records(synth_dir, 10)
    (tmp_path / "in.jsonl").write_text(
        "\n".join(json.dumps({**r, "image": os.path.join(synth_dir, r["image"])}) for r in rows) + "\n"
    )
    _run(tokenizers, str(tmp_path / "in.jsonl"), tmp_path / "out", task=task, seq_len=40)
    stored = _load_all(str(tmp_path / "out"))
    for key, seq in _reference(tokenizers, rows, synth_dir, 40, task).items():
        assert stored[key].tolist() == seq.tokens.tolist()


def test_user_errors(tokenizers, synth_dir, tmp_path):
    inputs = os.path.join(synth_dir, "captions.jsonl")
    with pytest.raises(DataError, match="--seq-len 10 leaves no room.*at least 21"):
        _run(tokenizers, inputs, tmp_path / "a", seq_len=10)
    with pytest.raises(DataError, match="not found"):
        _run(tokenizers, str(tmp_path / "nope.jsonl"), tmp_path / "b")
    with pytest.raises(DataError, match="--task"):
        _run(tokenizers, inputs, tmp_path / "c", task="video")
    with pytest.raises(DataError, match="--prefix"):
        _run(tokenizers, inputs, tmp_path / "d", prefix="a.b")


def test_loader_refuses_data_made_with_another_text_tokenizer(tokenizers, synth_dir, tmp_path):
    from tokenization.text import train_text_tokenizer

    _run(tokenizers, os.path.join(synth_dir, "captions.jsonl"), tmp_path / "out")
    other = train_text_tokenizer([os.path.join(synth_dir, "captions.jsonl")], tmp_path / "other", 30,
                                 caption_column="caption")
    theirs = TextTokenizer(other).fingerprint()
    with pytest.raises(DataError, match="another text tokenizer.*re-run `cogview preprocess`"):
        build_loader(str(tmp_path / "out"), 0, 1, batch_size=2, text_tokenizer_fingerprint=theirs)
    ours = TextTokenizer(tokenizers[0]).fingerprint()
    build_loader(str(tmp_path / "out"), 0, 1, batch_size=2, text_tokenizer_fingerprint=ours)
