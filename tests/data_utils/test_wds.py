"""Tar shard writing and reading: atomic files, keys, truncation, sample encoding, manifest."""
from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from data_utils.errors import DataError
from data_utils.shards import Manifest, decode_sample, encode_sample, storage_dtype
from data_utils.wds import AtomicTarWriter, ShardReadError, iter_tar, safe_key


def _write(path: str, n: int) -> None:
    with AtomicTarWriter(path) as w:
        for i in range(n):
            w.write({"__key__": f"k{i:03d}", "txt": f"caption {i}", "bin": bytes([i % 256]) * 700})


def test_round_trip_is_readable_by_plain_tarfile(tmp_path):
    path = str(tmp_path / "a.tar")
    _write(path, 5)
    assert not os.path.exists(path + ".partial")
    with tarfile.open(path) as tf:  # an independent reader sees KEY.EXT members
        assert tf.getnames()[:2] == ["k000.bin", "k000.txt"]
    samples = list(iter_tar(path))
    assert [s["__key__"] for s in samples] == [f"k{i:03d}" for i in range(5)]
    assert samples[3]["txt"] == b"caption 3" and samples[3]["bin"] == bytes([3]) * 700


def test_writer_failure_leaves_no_shard(tmp_path):
    path = str(tmp_path / "b.tar")
    with pytest.raises(RuntimeError):
        with AtomicTarWriter(path) as w:
            w.write({"__key__": "a", "txt": "x"})
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_keys_with_dots_are_refused_and_cleaned(tmp_path):
    with AtomicTarWriter(str(tmp_path / "c.tar")) as w:
        with pytest.raises(DataError, match="contains '.'"):
            w.write({"__key__": "img.001", "txt": "x"})
    assert safe_key("folder/img.001 a") == "folder_img_001_a"
    with pytest.raises(DataError, match="empty"):
        safe_key("  ")


def test_truncated_tar_keeps_good_prefix_then_raises(tmp_path):
    path = str(tmp_path / "d.tar")
    _write(path, 10)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2 + 100)
    got = []
    with pytest.raises(ShardReadError, match="d.tar.*corrupt or truncated") as info:
        for sample in iter_tar(path):
            got.append(sample["__key__"])
    assert 2 <= len(got) < 10 and got == [f"k{i:03d}" for i in range(len(got))]
    assert info.value.key is not None


def test_sample_encoding_round_trip():
    tokens = np.array([5, 60000, 0, 1], dtype=np.int64)
    raw = encode_sample("key", tokens, np.arange(4), "猫", {"source": "x.jpg"}, storage_dtype(58240))
    s = decode_sample(raw, 4)
    assert s.tokens.dtype == np.int64 and s.tokens.tolist() == tokens.tolist()
    assert s.position_ids.tolist() == [0, 1, 2, 3] and s.caption == "猫" and s.meta == {"source": "x.jpg"}
    with pytest.raises(ValueError, match="expected"):
        decode_sample(raw, 5)
    assert storage_dtype(65536) == "uint16" and storage_dtype(65537) == "int32"


def test_manifest_load_errors(tmp_path):
    (tmp_path / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a valid dataset manifest"):
        Manifest.load(str(tmp_path))
