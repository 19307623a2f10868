"""Tar shard faults: every damaged read ends with ShardReadError, every valid archive reads whole, nothing hangs."""
from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from data_utils.wds import ShardReadError, iter_tar

# Four one-member samples at offsets 0 / 1536 / 3584 / 4608; the 1 KiB before 3584 is zeros (b's padding).
SAMPLES = [
    {"__key__": "a", "bin": b"x" * 1000},
    {"__key__": "b", "bin": b"y" * 10 + bytes(1500)},
    {"__key__": "c", "bin": b"z" * 500},
    {"__key__": "d", "bin": b"w"},
]
OFFSETS = [0, 1536, 3584, 4608]


def _archive(tmp_path) -> bytes:
    """The four samples as a plain ustar archive (one header block per member, 10 KiB records)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for s in SAMPLES:
            info = tarfile.TarInfo(f"{s['__key__']}.bin")
            info.size = len(s["bin"])
            tf.addfile(info, io.BytesIO(s["bin"]))
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:  # the layout the cases below rely on
        assert [m.offset for m in tf.getmembers()] == OFFSETS
    return buf.getvalue()


def _read(tmp_path, data: bytes, name: str = "x.tar") -> tuple[list[dict], BaseException | None]:
    """(samples yielded, the ShardReadError that ended the read or None)."""
    path = tmp_path / name
    path.write_bytes(data)
    got: list[dict] = []
    try:
        for sample in iter_tar(str(path)):
            got.append(sample)
    except ShardReadError as e:
        return got, e
    return got, None


def _expected() -> list[dict]:
    return [dict(s) for s in SAMPLES]


def _end_of_members(data: bytes) -> int:
    """Offset of the first end-of-archive block (the last member is d: one header + one data block)."""
    return OFFSETS[-1] + 1024


def test_header_bit_flip_after_the_first_member_is_a_fault(tmp_path):
    data = bytearray(_archive(tmp_path))
    data[1536] ^= 1
    got, err = _read(tmp_path, bytes(data))
    assert err is not None and "offset 1536" in str(err) and "checksum" in str(err)
    assert got == []  # a's end is only known when b's header is read; b's header is bad


def test_every_header_bit_flip_is_a_fault_or_harmless(tmp_path):
    data = _archive(tmp_path)
    for offset in OFFSETS:
        for pos in range(offset, offset + 512, 7):
            for bit in (0, 5):
                damaged = bytearray(data)
                damaged[pos] ^= 1 << bit
                got, err = _read(tmp_path, bytes(damaged))
                if err is None:
                    assert got == _expected(), (pos, bit)  # e.g. a flip after a field's NUL terminator
                else:
                    assert got == _expected()[: len(got)], (pos, bit)


def test_cut_at_a_member_boundary_after_zeros_is_a_fault(tmp_path):
    data = _archive(tmp_path)
    assert data[3584 - 1024 : 3584] == bytes(1024)
    got, err = _read(tmp_path, data[:3584])
    assert err is not None and "end-of-archive" in str(err)
    assert [s["__key__"] for s in got] == ["a"]


def test_every_cut_is_a_fault_or_complete(tmp_path):
    data = _archive(tmp_path)
    end = _end_of_members(data)
    for cut in range(0, len(data), 64):
        got, err = _read(tmp_path, data[:cut])
        if cut < end + 512:  # no complete end block: the cut must be reported
            assert err is not None, cut
            assert got == _expected()[: len(got)], cut
        else:
            assert err is None and got == _expected(), cut


def test_truncated_gzip_is_a_fault(tmp_path):
    data = gzip.compress(_archive(tmp_path), mtime=0)
    got, err = _read(tmp_path, data, "x.tar.gz")
    assert err is None and got == _expected()
    for cut in (len(data) - 4, len(data) // 2, 12):
        got, err = _read(tmp_path, data[:cut], "x.tar.gz")
        assert err is not None, cut
        assert got == _expected()[: len(got)]


def test_corrupt_gzip_is_a_fault(tmp_path):
    data = bytearray(gzip.compress(_archive(tmp_path), mtime=0))
    data[-6] ^= 0xFF  # the CRC-32 in the trailer
    got, err = _read(tmp_path, bytes(data), "x.tar.gz")
    assert err is not None and got == _expected()[: len(got)]


@pytest.mark.parametrize("tail", [b"\n", b"junk" * 128, bytes(512), bytes(7)])
def test_bytes_after_the_end_blocks_are_accepted(tmp_path, tail):
    data = _archive(tmp_path)
    got, err = _read(tmp_path, data + tail)
    assert err is None and got == _expected()


def test_a_single_final_zero_block_is_accepted(tmp_path):
    data = _archive(tmp_path)[: _end_of_members(b"") + 512]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:  # the reference reads every member too
        assert len(tf.getmembers()) == 4
    got, err = _read(tmp_path, data)
    assert err is None and got == _expected()


def test_a_lone_zero_block_followed_by_data_is_a_fault(tmp_path):
    data = bytearray(_archive(tmp_path))
    data[3584:4096] = bytes(512)  # c's header wiped: the archive seems to end, but members follow
    got, err = _read(tmp_path, bytes(data))
    assert err is not None and "zero block" in str(err)
    assert [s["__key__"] for s in got] == ["a"]  # b may have had more members: it is not yielded


def _pax_member(name: str, records: dict[str, str], data: bytes) -> bytes:
    """A pax extended header with the given records, then a ustar member `name` holding data."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        n = len(record) + 1
        while len(str(n)) + len(record) != n:
            n += 1
        body += str(n).encode() + record
    x = tarfile.TarInfo("PaxHeader")
    x.type, x.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo(name)
    member.size = len(data)
    pad = lambda b: b + bytes(-len(b) % 512)  # noqa: E731
    return (x.tobuf(tarfile.USTAR_FORMAT) + pad(body) + member.tobuf(tarfile.USTAR_FORMAT) + pad(data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lead", ["none", "directory"])  # a directory first sent the old reader to tarfile
def test_a_huge_pax_size_is_a_fault_at_once(tmp_path, lead):
    """A meta-named member (skipped, never read) whose pax size is 10**15: once a reader that streamed for hours."""
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    data = directory.tobuf(tarfile.USTAR_FORMAT) if lead == "directory" else b""
    data += _pax_member("k.txt", {}, b"hi") + _pax_member("__index__/x.json", {"size": "1000000000000000"}, b"{}")
    data += _pax_member("k.json", {}, b"{}") + bytes(1024)
    got, err = _read(tmp_path, data)
    assert err is not None and "past the end" in str(err)
    assert got == []  # k is still open when the bad member is met


@pytest.mark.timeout(60)
def test_a_huge_header_size_is_a_fault_at_once(tmp_path):
    data = bytearray(_archive(tmp_path))
    member = tarfile.TarInfo("c.bin")
    member.size = 8**11 - 1  # 8 GiB claimed in the size field
    data[3584:4096] = member.tobuf(tarfile.USTAR_FORMAT)
    got, err = _read(tmp_path, bytes(data))
    assert err is not None and "past the end" in str(err)
    assert [s["__key__"] for s in got] == ["a"]


def test_an_empty_file_is_a_fault(tmp_path):
    got, err = _read(tmp_path, b"")
    assert err is not None and got == []


def test_an_empty_archive_reads_as_no_samples(tmp_path):
    got, err = _read(tmp_path, bytes(10240))
    assert err is None and got == []


def test_a_missing_file_is_not_a_shard_fault(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_tar(str(tmp_path / "nope.tar")))


def test_faults_name_the_offset_and_the_open_sample(tmp_path):
    data = _archive(tmp_path)
    got, err = _read(tmp_path, data[:4300])  # inside c's data: b is the sample still open
    assert err is not None and "offset 3584" in str(err) and err.key == "b" and os.path.basename(err.path) == "x.tar"


def test_preprocess_inputs_report_a_damaged_img2dataset_tar(tmp_path):
    """`cogview preprocess` has no manifest to compare against: the damage must reach it as an error item."""
    from data_utils.sources import iter_inputs

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:  # img2dataset's layout: KEY.jpg + KEY.txt
        for key in ("000", "001", "002"):
            for ext, body in (("jpg", b"\xff\xd8 not decoded here"), ("txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    data = bytearray(buf.getvalue())
    data[4096 + 3] ^= 4  # the header of 002.jpg (each member: one header block + one data block)
    (tmp_path / "pairs.tar").write_bytes(bytes(data))
    items = list(iter_inputs([str(tmp_path / "pairs.tar")]))
    assert [i.key for i in items] == ["000", "001_broken"]  # 001 may have had more files: reported, not used
    assert items[0].error is None and items[0].caption == "caption 000"
    assert "offset 4096" in str(items[1].error)
