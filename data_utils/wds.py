"""The one place that imports webdataset: tar shard writing (atomic) and fault-aware tar reading."""
from __future__ import annotations

import os
import re
from typing import Callable, Iterator, Optional

from webdataset.tariterators import tar_file_iterator
from webdataset.writer import TarWriter

from .errors import DataError

PARTIAL_SUFFIX = ".partial"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # KEY.EXT split of webdataset's base_plus_ext

Sample = dict[str, object]  # "__key__" -> str, every other field -> bytes


class ShardReadError(DataError):
    """A tar shard is truncated or corrupt; `key` is the sample being read when it failed."""

    def __init__(self, path: str, key: str | None, cause: BaseException) -> None:
        super().__init__(
            f"shard {path} is corrupt or truncated near sample {key!r} ({type(cause).__name__}: {cause}); "
            "re-create it with `cogview preprocess`"
        )
        self.path, self.key, self.cause = path, key, cause


def safe_key(key: str) -> str:
    """A tar sample key with no dots or path separators (webdataset ends a key at the first dot)."""
    cleaned = _KEY_BAD.sub("_", key.strip())
    if not cleaned:
        raise DataError(f"sample key {key!r} is empty after cleaning; give every sample a non-empty key")
    return cleaned


class AtomicTarWriter:
    """Writes samples to `<path>.partial` and renames it to `path` only when closed without error."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.partial = path + PARTIAL_SUFFIX
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(self.partial, "wb")
        self._writer = TarWriter(self._file, encoder=False, mtime=0.0, mode=0o644)
        self.count = 0

    def write(self, sample: Sample) -> None:
        """Add one sample: `__key__` (no dots) plus fields of bytes or str."""
        key = str(sample["__key__"])
        if "." in key or "/" in key:
            raise DataError(f"sample key {key!r} contains '.' or '/'; clean it with data_utils.wds.safe_key")
        fields = {k: (v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v) for k, v in sample.items()}
        self._writer.write(fields)
        self.count += 1

    def close(self) -> None:
        """Finish the tar, flush it to disk and move it to its final name."""
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._writer.close()
        finally:
            self._file.close()
            if os.path.exists(self.partial):
                os.remove(self.partial)

    def __enter__(self) -> "AtomicTarWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_tar(path: str, select: Callable[[str], bool] | None = None) -> Iterator[Sample]:
    """Samples of a tar file grouped by key; raises ShardReadError after the good prefix of a bad tar."""
    current: Sample | None = None
    try:
        for fname, data in _entries(path, select):
            match = _KEY_EXT.match(fname)  # webdataset's base_plus_ext, compiled once
            if match is None:
                continue
            key, ext = match.groups()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            ext = ext.lower()
            if ext in current:
                raise ValueError(f"duplicate file {fname} (keys must not repeat within a shard)")
            current[ext] = data
        if not _has_end_marker(path):  # tarfile ends silently when a cut falls inside a header
            raise EOFError("the tar has no end-of-archive marker (the file is cut short)")
    except FileNotFoundError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, OSError, zlib errors, ...
        key = str(current["__key__"]) if current is not None else None
        raise ShardReadError(path, key, e) from e
    if current is not None:
        yield current


_BLOCK = 512
_COMPRESSED_MAGIC = (b"\x1f\x8b\x08", b"\x5d\x00\x00\x80", b"\xfd7zXZ")
_META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # as tarfile parses pax records
_PAX_IGNORED = frozenset({"mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"})
_OCTAL = re.compile(rb" *[0-7]* *(\x00.*)?", re.DOTALL)  # number fields tarfile's nti reads the same way


def _entries(path: str, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of a tar's regular files, exactly as webdataset's tar_file_iterator yields them.

    Plain ustar/pax members (what TarWriter and most tools write) are parsed directly, several times faster
    than tarfile; at the first thing that is not plain (compression, other member types, a bad checksum, a
    cut) the rest is read by webdataset/tarfile, which skips what was already yielded and decides the outcome.
    """
    done = 0
    with open(path, "rb", buffering=1 << 20) as f:
        for entry in _plain_entries(f):
            if entry is None:
                break
            fname = entry[0]
            if ("/" not in fname and fname.startswith("__") and fname.endswith("__")) or _META_NAME.match(fname):
                continue
            if select is not None and not select(fname):
                continue
            done += 1
            yield entry
        else:
            return
    with open(path, "rb") as f:
        for i, entry in enumerate(tar_file_iterator(f, handler=_reraise, select_files=select)):
            if i >= done:
                yield entry["fname"], entry["data"]


def _plain_entries(f) -> Iterator[Optional[tuple[str, bytes]]]:
    """Regular files of a plain uncompressed tar up to its end-of-archive block; None where tarfile must take over."""
    checked: set[bytes] = set()  # number fields already validated
    pax_sizes: dict[bytes, int] = {}  # validated pax header block -> size of its records (usually one block)
    pax_records: dict[bytes, dict[str, str]] = {}  # pax records -> the fields they set
    header = f.read(_BLOCK)
    if header.startswith(_COMPRESSED_MAGIC) or (header[0:3] == b"BZh" and header[4:10] == b"1AY&SY"):
        yield None
        return
    while True:
        if len(header) == _BLOCK and header.count(0) == _BLOCK:
            return  # end-of-archive block: tarfile stops here too
        pax: dict[str, str] = {}
        if header[156:157] == b"x":  # pax extended header for the next member
            size = pax_sizes.get(header)
            if size is None:
                member = _plain_header(header, checked)
                if member is None:
                    yield None
                    return
                size = member[1]
                if len(pax_sizes) < 64:
                    pax_sizes[header] = size
            buf = f.read(_padded(size))
            parsed = pax_records.get(buf)
            if parsed is None:
                parsed = _pax_fields(buf) if len(buf) == _padded(size) else None
                if parsed is None:
                    yield None
                    return
                if len(pax_records) < 64:
                    pax_records[buf] = parsed
            pax = parsed
            header = f.read(_BLOCK)
        member = _plain_header(header, checked)
        if member is None or member[2] != b"0":
            yield None
            return
        name, size = pax.get("path", member[0]), int(pax.get("size", member[1]))
        data = f.read(_padded(size))
        if len(data) != _padded(size):
            yield None
            return
        yield name, data[:size]
        header = f.read(_BLOCK)


def _padded(size: int) -> int:
    """Bytes a member of `size` bytes occupies (whole blocks)."""
    return -(-size // _BLOCK) * _BLOCK


def _plain_header(header: bytes, checked: set[bytes]) -> tuple[str, int, bytes] | None:
    """(name, size, type) of a regular-file or pax header that tarfile reads the same way; None for anything else."""
    if len(header) != _BLOCK or header[156:157] not in (b"0", b"x") or header[345] != 0:
        return None
    numbers = header[100:156] + header[329:345]
    if numbers not in checked:
        fields = (header[i : i + n] for i, n in ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (329, 8), (337, 8)))
        if not all(_OCTAL.fullmatch(x) for x in fields):
            return None
        checked.add(numbers)
    chksum, size = header[148:156], header[124:136]
    chksum, size = int(chksum.split(b"\x00", 1)[0].strip() or b"0", 8), int(size.split(b"\x00", 1)[0].strip() or b"0", 8)
    if chksum != 256 + sum(header) - sum(header[148:156]):
        return None
    name = header[0:100].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
    return name, size, header[156:157]


def _pax_fields(buf: bytes) -> dict[str, str] | None:
    """path/size of a pax record block (whole blocks, as tarfile parses it); None if it holds anything else."""
    fields: dict[str, str] = {}
    pos = 0
    while (match := _PAX_RECORD.match(buf, pos)) is not None:
        length, keyword = int(match.group(1)), match.group(2)
        if length == 0:
            return None
        value = buf[match.end(2) + 1 : match.start(1) + length - 1]
        try:
            key, text = keyword.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if key == "path":
            fields["path"] = text.rstrip("/")
        elif key == "size" and text.isascii() and text.isdigit():
            fields["size"] = text
        elif key not in _PAX_IGNORED:
            return None
        pos += length
    return fields


def _has_end_marker(path: str) -> bool:
    """True when an uncompressed tar ends with zero blocks (compressed tars are not checked)."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return True
        size = f.seek(0, os.SEEK_END)
        if size % 512 or size < 1024:
            return False
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def _reraise(exn: Exception) -> bool:
    """webdataset handler that lets every error reach iter_tar."""
    raise exn
