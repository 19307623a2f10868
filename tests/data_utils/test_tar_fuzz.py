"""Differential fuzz of the strict tar reader against Python's tarfile (and webdataset) on seeded archives.

Valid archives must read exactly as tarfile reads them; damaged ones must either read exactly as tarfile reads
them (when the damage is invisible, e.g. in member data) or end with TarFault after a prefix of tarfile's files,
and damage to a header block or a cut must never go unnoticed. COGVIEW_TAR_FUZZ_CASES and
COGVIEW_TAR_FUZZ_SEED scale and vary the run.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from webdataset.tariterators import tar_file_iterator

from data_utils.tarread import TarFault, read_tar
from data_utils.wds import iter_tar

from .tarfuzz import Entries, compress, damage, reference, valid_archive, webdataset_wants

CASES = int(os.environ.get("COGVIEW_TAR_FUZZ_CASES", "600"))  # per test below; 4 tests
SEED = int(os.environ.get("COGVIEW_TAR_FUZZ_SEED", "0"))


def _ours(path: str) -> tuple[Entries, TarFault | None]:
    out: Entries = []
    try:
        for entry in read_tar(path, webdataset_wants):
            out.append(entry)
    except TarFault as e:
        return out, e
    return out, None


def _write(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "fuzz.tar")
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_valid_archives_read_exactly_as_tarfile_and_webdataset(tmp_path):
    rng = np.random.default_rng([SEED, 1])
    for case in range(CASES):
        archive = valid_archive(rng)
        ref, ref_ok = reference(archive)
        assert ref_ok, case
        path = _write(tmp_path, archive)
        got, err = _ours(path)
        assert err is None and got == ref, (case, err)
        if case % 4 == 0:  # the streaming reader iter_tar was defined by
            wds = [(e["fname"], e["data"]) for e in tar_file_iterator(io.BytesIO(archive))]
            assert got == wds, case


def test_damaged_archives_fault_or_read_as_tarfile(tmp_path):
    rng = np.random.default_rng([SEED, 2])
    kinds: dict[str, int] = {}
    for case in range(CASES):
        intact = valid_archive(rng)
        intact_entries, _ = reference(intact)
        kind, data = damage(rng, intact)
        ref, ref_ok = reference(data)
        got, err = _ours(_write(tmp_path, data))
        assert got == ref[: len(got)], (case, kind)  # never a wrong byte, never a file tarfile does not see
        if err is None:
            assert ref_ok and got == ref, (case, kind)
            if kind in ("cut", "header_flip"):  # this damage is always detectable
                assert got == intact_entries, (case, kind)
        kinds[kind] = kinds.get(kind, 0) + (err is not None)
    assert kinds.get("cut", 0) > 0 and kinds.get("header_flip", 0) > 0


def test_compressed_archives_are_checked(tmp_path):
    rng = np.random.default_rng([SEED, 3])
    for case in range(CASES // 3):
        intact = valid_archive(rng)
        intact_entries, _ = reference(intact)
        kind, data = compress(rng, intact)
        got, err = _ours(_write(tmp_path, data))
        assert err is None and got == intact_entries, (case, kind)
        cut = data[: int(rng.integers(0, len(data)))]
        got, err = _ours(_write(tmp_path, cut))
        assert err is not None and got == [], (case, kind)  # verified before anything is yielded
        flipped = bytearray(data)
        flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        got, err = _ours(_write(tmp_path, bytes(flipped)))
        assert (err is not None and got == []) or got == intact_entries, (case, kind)


def test_iter_tar_turns_every_fault_into_shard_read_error(tmp_path):
    from data_utils.wds import ShardReadError

    rng = np.random.default_rng([SEED, 4])
    for case in range(CASES // 3):
        intact = valid_archive(rng)
        kind, data = damage(rng, intact)
        if rng.random() < 0.3:
            kind, data = compress(rng, data)
            data = data[: int(rng.integers(len(data) // 2, len(data) + 1))]
        try:
            for _ in iter_tar(_write(tmp_path, data)):
                pass
        except ShardReadError:
            pass
        except ValueError as e:  # a duplicate file within one sample is the only other outcome
            pytest.fail(f"case {case} ({kind}): {e!r}")
