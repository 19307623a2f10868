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


def _samples(out: str) -> dict:
    """Every stored TokenSample (full stored sequence and meta) by key, read straight from the shards."""
    from data_utils.remote import iter_shard
    from data_utils.shards import decode_sample

    manifest = Manifest.load(out)
    samples = [decode_sample(raw, manifest.seq_len) for path in manifest.shard_paths() for raw in iter_shard(path)]
    return {s.key: s for s in samples}


@pytest.fixture(scope="module")
def scenes_64(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A few synthetic scenes rendered at 64 px (twice the tiny VQ-VAE's 32 px)."""
    from data_utils.synth import write_synth

    out = str(tmp_path_factory.mktemp("synth64"))
    write_synth(out, 12, image_size=64, seed=0)
    return out


def _crop_run(tokenizers, scenes_64: str, out, seed: int = 3, **kwargs) -> Manifest:
    return _run(tokenizers, os.path.join(scenes_64, "captions.jsonl"), out, task="superres", seq_len=60,
                image_size=64, crop=32, crop_seed=seed, **kwargs)


def test_superres_crops_are_windows_of_the_whole_scene_codes(tokenizers, scenes_64, tmp_path):
    """A crop's codes are a window of the whole scene's code grids (high: the 64 px image's, low: its 32 px
    downsample's) at a code-aligned corner: exactly what a magnify window reads and writes at inference, so the
    SR model is trained on the inputs it will see (a crop encoded on its own has other codes at its borders: 43% of
    the cells with the demo's trained VQ-VAE; this untrained one happens to agree, so the corner check carries it)."""
    manifest = _crop_run(tokenizers, scenes_64, tmp_path / "out", crops_per_image=2)
    rows = _records(scenes_64)
    stored = _samples(str(tmp_path / "out"))
    assert manifest.settings["image_size"] == 32  # the SR model's image size (its grid is read from it)
    assert manifest.settings["crop"] == {"image_size": 64, "seed": 3, "per_image": 2, "windows": "code-aligned"}
    assert sorted(stored) == sorted(f"{r['key']}_crop{j}" for r in rows for j in range(2))
    text, image = TextTokenizer(tokenizers[0]), ImageTokenizer.from_pretrained(tokenizers[1])
    layout = TokenLayout(image.num_codes, text.vocab_size)
    ds = image.downsample  # 8: 64 px -> 8x8 codes, its 32 px downsample -> 4x4
    corners = set()
    for row in rows:
        whole = Image.open(os.path.join(scenes_64, row["image"])).convert("RGB")
        assert whole.size == (64, 64)
        high_all, low_all = image.encode(whole, image_size=64)[0], image.encode(whole, image_size=32)[0]
        for j in range(2):
            sample = stored[f"{row['key']}_crop{j}"]
            left, top, size = sample.meta["crop"]
            assert size == 32 and 0 <= left <= 32 and 0 <= top <= 32
            assert left % (2 * ds) == 0 and top % (2 * ds) == 0  # on the low-res code grid
            corners.add((left, top))
            high = high_all[top // ds : top // ds + 4, left // ds : left // ds + 4]
            low = low_all[top // (2 * ds) : top // (2 * ds) + 2, left // (2 * ds) : left // (2 * ds) + 2]
            expected = templates.super_resolution(layout, text.encode(row["caption"]), low, high, 60)
            assert sample.tokens.tolist() == expected.tokens.tolist(), (row["key"], j)
            assert sample.caption == row["caption"] and sample.meta["source"] == row["key"]
    assert len(corners) > 1  # random positions, not one fixed crop


def test_superres_crops_are_deterministic_for_a_seed(tokenizers, scenes_64, tmp_path):
    _crop_run(tokenizers, scenes_64, tmp_path / "a", samples_per_shard=5, batch_size=3)
    _crop_run(tokenizers, scenes_64, tmp_path / "b", samples_per_shard=12, batch_size=64)  # other shards/batches
    _crop_run(tokenizers, scenes_64, tmp_path / "c", seed=4, samples_per_shard=5)
    a, b, c = (_samples(str(tmp_path / d)) for d in "abc")
    assert sorted(a) == sorted(b) == sorted(c) == sorted(r["key"] for r in _records(scenes_64))
    for key in a:
        assert a[key].meta["crop"] == b[key].meta["crop"] and a[key].tokens.tolist() == b[key].tokens.tolist()
    assert any(a[key].meta["crop"] != c[key].meta["crop"] for key in a)  # another seed, other crops


@pytest.mark.parametrize(("flags", "message"), [
    (["--task", "superres", "--image-size", "64", "--crop", "128"], "--crop 128 is larger than the 64 px images"),
    (["--task", "superres", "--image-size", "64", "--crop", "24"], "--crop 24 must be a positive multiple of 16"),
    (["--task", "text2image", "--crop", "16"], "--crop applies to --task superres"),
    (["--task", "superres", "--crops-per-image", "2"], "--crops-per-image 2 needs --crop"),
])
def test_bad_crop_is_one_line_exit_2(tokenizers, scenes_64, tmp_path, capsys, flags, message):
    from megatron_cogview.cli import main

    argv = ["preprocess", os.path.join(scenes_64, "captions.jsonl"), "--text-tokenizer", tokenizers[0],
            "--image-tokenizer", tokenizers[1], "--out", str(tmp_path / "out"), "--seq-len", "60", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
