"""Seeded generators of tar archives (valid and damaged) and the tarfile reference they are checked against."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import tarfile

import numpy as np

Entries = list[tuple[str, bytes]]
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_EXTS = ("txt", "jpg", "json", "npy", "TXT", "tar.gz", "cls")
_FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)


def webdataset_wants(name: str) -> bool:
    """The files webdataset's tar_file_iterator keeps (meta names skipped)."""
    return not (("/" not in name and name.startswith("__") and name.endswith("__")) or _META.match(name))


def reference(data: bytes) -> tuple[Entries, bool]:
    """(regular files tarfile reads before it stops, whether it read to the end without an exception)."""
    out: Entries = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*", encoding="utf-8", errors="surrogateescape") as tf:
            for member in tf:
                if member.isreg() and webdataset_wants(member.name):
                    out.append((member.name, tf.extractfile(member).read()))  # type: ignore[union-attr]
    except Exception:  # tarfile.ReadError, EOFError, zlib/lzma errors, ...
        return out, False
    return out, True


def _name(rng: np.random.Generator, i: int) -> str:
    """A member name: short, nested, long (ustar prefix or GNU/pax long name), unicode or webdataset meta."""
    ext = _EXTS[int(rng.integers(len(_EXTS)))]
    kind = int(rng.integers(9))
    if kind == 0:
        return f"d{int(rng.integers(3))}/k{i:03d}.{ext}"
    if kind == 1:
        return "a" * int(rng.integers(50, 150)) + "/" + "b" * int(rng.integers(50, 98)) + f"{i}.{ext}"
    if kind == 2:
        return "n" * int(rng.integers(95, 300)) + f"{i}.{ext}"
    if kind == 3:
        return ("猫_ключ_" * int(rng.integers(1, 12))) + f"{i}.{ext}"
    if kind == 4:
        return ("__key__", "__index__/x.json", "__local__/a.txt")[int(rng.integers(3))]
    return f"k{i:03d}.{ext}"


def _data(rng: np.random.Generator) -> bytes:
    size = int((0, 1, 511, 512, 513, 1024, int(rng.integers(0, 3000)))[int(rng.integers(7))])
    return bytes(size) if rng.random() < 0.2 else rng.bytes(size)


def valid_archive(rng: np.random.Generator) -> bytes:
    """A well-formed archive: mixed formats, names, sizes, member types, pax records and end-of-archive forms."""
    fmt = _FORMATS[int(rng.integers(3))]
    buf = io.BytesIO()
    global_pax = {"comment": "made by a fuzzer"} if fmt == tarfile.PAX_FORMAT and rng.random() < 0.2 else None
    tf = tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape",
                      pax_headers=global_pax)
    regular: list[str] = []
    for i in range(int(rng.integers(0, 9))):
        name = regular[-1] if regular and rng.random() < 0.08 else _name(rng, i)  # a duplicate now and then
        info = tarfile.TarInfo(name)
        info.mtime = int(rng.integers(0, 2**33)) if rng.random() < 0.1 else 1_700_000_000
        if fmt != tarfile.USTAR_FORMAT and rng.random() < 0.1:
            info.uid = 2**40  # GNU: base-256 field; pax: a uid record
        if fmt == tarfile.PAX_FORMAT and rng.random() < 0.2:
            info.pax_headers = {"comment": "x" * int(rng.integers(1, 700)), "mtime": "1700000000.25"}
        kind = int(rng.integers(12))
        data = b""
        if kind == 0:
            info.type = tarfile.DIRTYPE
        elif kind == 1:
            info.type, info.linkname = tarfile.SYMTYPE, "t" * int(rng.integers(1, 200))
        elif kind == 2 and regular:
            info.type, info.linkname = tarfile.LNKTYPE, regular[0]
        elif kind == 3:
            info.type = tarfile.FIFOTYPE
        else:
            info.type = (tarfile.AREGTYPE, tarfile.CONTTYPE)[kind - 4] if kind in (4, 5) else tarfile.REGTYPE
            if info.type == tarfile.AREGTYPE and len(name.encode()) > 99:
                info.type = tarfile.REGTYPE  # tarfile would read the truncated name "a.../" as a V7 directory
            data = _data(rng)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT and rng.random() < 0.15:  # size in a pax record, 0 in the header
                info.pax_headers = {**info.pax_headers, "size": str(len(data))}
        try:
            tf.addfile(info, io.BytesIO(data))
        except ValueError:  # a name or number this format cannot store
            continue
        if info.isreg():
            regular.append(name)
    end = tf.offset
    tf.close()
    if global_pax and end == 1024:  # a global header alone: tarfile (and POSIX) want a member after it
        return valid_archive(rng)
    archive = buf.getvalue()[:end]
    return archive + _end_marker(rng, len(archive) + 1024)


def _end_marker(rng: np.random.Generator, length: int) -> bytes:
    """Two zero blocks padded to a blocking factor, a lone final zero block, or either plus trailing bytes."""
    kind = int(rng.integers(6))
    if kind == 0:
        return bytes(512)
    factor = int(rng.choice([1, 2, 3, 20, 126]))
    end = bytes(1024 + (-length) % (512 * factor))
    if kind == 1:
        return end + (b"\n", bytes(512), rng.bytes(int(rng.integers(1, 2000))))[int(rng.integers(3))]
    return end


def headers(archive: bytes) -> list[tuple[int, int]]:
    """(first header offset, data offset) of every member as tarfile sees them."""
    with tarfile.open(fileobj=io.BytesIO(archive), encoding="utf-8", errors="surrogateescape") as tf:
        return [(m.offset, m.offset_data) for m in tf.getmembers()]


def _checksummed(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def damage(rng: np.random.Generator, archive: bytes) -> tuple[str, bytes]:
    """(kind, damaged copy): a cut, bit flips in a header or anywhere, a wiped or rewritten header, an insertion."""
    spans = headers(archive)
    kind = ("cut", "header_flip", "flip", "wipe", "rewrite", "insert", "delete")[int(rng.integers(7))]
    if not spans and kind not in ("cut", "flip"):
        kind = "cut"
    data = bytearray(archive)
    if kind == "cut":
        return kind, archive[: int(rng.integers(0, len(archive)))]
    if kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        return kind, bytes(data)
    first, data_at = spans[int(rng.integers(len(spans)))]
    if kind == "header_flip":  # in the member's own header block (extension bodies have no checksum)
        pos = int(rng.integers(data_at - 512, data_at))
        data[pos] ^= 1 << int(rng.integers(8))
    elif kind == "wipe":
        block = first + 512 * int(rng.integers((data_at - first) // 512))
        data[block : block + 512] = bytes(512)
    elif kind == "rewrite":
        block = bytearray(data[data_at - 512 : data_at])
        if rng.random() < 0.5:
            size = int(rng.choice([0, 1, 512, int(rng.integers(0, 2 * len(archive))), 8**11 - 1]))
            block[124:136] = b"%011o\x00" % size
        else:
            block[156:157] = bytes([b"0125x gLKS7V\x00"[int(rng.integers(13))]])
        data[data_at - 512 : data_at] = _checksummed(block)
    elif kind == "insert":
        pos = int(rng.integers(len(data) + 1))
        data[pos:pos] = rng.bytes(int(rng.choice([1, 100, 512])))
    else:
        pos = int(rng.integers(first, data_at))
        del data[pos : pos + int(rng.choice([1, 100, 512]))]
    return kind, bytes(data)


def compress(rng: np.random.Generator, archive: bytes) -> tuple[str, bytes]:
    """The archive gzip-, bzip2- or xz-compressed."""
    kind = ("gz", "bz2", "xz")[int(rng.integers(3))]
    if kind == "gz":
        return kind, gzip.compress(archive, mtime=0)
    return kind, bz2.compress(archive) if kind == "bz2" else lzma.compress(archive)
