"""A strict tar reader: the regular files of a ustar/GNU/pax archive, plain or gzip/bzip2/xz compressed.

It yields exactly what Python's tarfile yields for a well-formed archive (names decoded as UTF-8 with
surrogateescape, pax and GNU long names applied the way tarfile applies them), but it never ends quietly:
a bad header checksum, a cut, a member that runs past the end of the file, a lone zero block followed by
data or a corrupt compressed stream raises TarFault naming the offset. The end of the archive is decided
where reading stops (a zero block there, followed by a second one or by the end of the file); bytes after a
proper end are ignored. Work is linear in the file size (the compressed size times the expansion for
compressed files, whose stream is verified in a first pass before anything is yielded): a member's size is
checked against the file's size before it is read.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import zlib
from typing import BinaryIO, Callable, Iterator

BLOCK = 512
_CHUNK = 1 << 24  # largest single read from a compressed stream (memory grows only with real data)
_REGULAR = frozenset({b"0", b"\x00", b"7"})  # tarfile's REGULAR_TYPES, less GNU sparse (refused)
_NO_DATA = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})  # tarfile skips no data blocks after these
_PAX = frozenset({b"x", b"X", b"g"})
_EXTENSIONS = _PAX | {b"L", b"K"}  # headers that describe the next member
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # as tarfile parses pax records
_DIGITS = re.compile(r"[0-9]+")
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))  # + chksum
_CACHE_LIMIT = 256


class TarFault(ValueError):
    """A tar archive is cut short or corrupt; the message names the byte offset."""


def read_tar(path: str, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file of the tar at `path` for which want(name) is true, in order."""
    with open(path, "rb", buffering=1 << 20) as raw:
        opener = _decompressor(raw.read(10))
        raw.seek(0)
        if opener is None:
            yield from _Reader(raw, os.fstat(raw.fileno()).st_size).members(want)
            return
        try:  # a compressed stream's checksum is at its end: verify it before anything is yielded
            with opener(raw) as stream:
                while stream.read(_CHUNK):
                    pass
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise TarFault(f"the compressed stream is corrupt or cut short ({type(e).__name__}: {e})") from e
        raw.seek(0)
        with opener(raw) as stream:
            yield from _Reader(stream, None).members(want)


def _decompressor(magic: bytes) -> Callable[[BinaryIO], BinaryIO] | None:
    """The reader of a gzip, bzip2 or xz/lzma stream (detected as tarfile's "r|*" does), None for a plain tar."""
    if magic.startswith(b"\x1f\x8b\x08"):
        return lambda f: gzip.GzipFile(fileobj=f, mode="rb")
    if magic[0:3] == b"BZh" and magic[4:10] == b"1AY&SY":
        return lambda f: bz2.BZ2File(f, "rb")
    if magic.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return lambda f: lzma.LZMAFile(f, "rb")
    return None


class _Reader:
    """One pass over a tar stream; `size` is the file's size for plain files, None for compressed streams."""

    def __init__(self, f: BinaryIO, size: int | None) -> None:
        self.f, self.size, self.pos = f, size, 0
        self.numbers: dict[bytes, int] = {}  # validated number fields (less the checksum) -> size
        self.headers: dict[bytes, tuple[str, int, bytes, str]] = {}  # whole repeated blocks (pax headers)
        self.pax: dict[bytes, tuple[str | None, int | None]] = {}  # repeated pax bodies -> (path, size)

    def members(self, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        """The wanted regular files up to the end-of-archive blocks; TarFault where the archive is damaged."""
        long_name: str | None = None  # from a GNU 'L' member or a pax path, for the next member
        pax_size: int | None = None
        extended_at: int | None = None  # offset of the first extension header of the pending member
        while True:
            at = self.pos
            header = self.f.read(BLOCK)
            self.pos += len(header)
            parsed = self.headers.get(header)  # only repeated pax headers are kept: never a zero block
            if parsed is None:
                if len(header) < BLOCK or (not header[148] and header.count(0) == BLOCK):  # chksum is never 0
                    if extended_at is not None:
                        raise TarFault(f"the extended header at offset {extended_at} has no member after it")
                    self._end(header, at)
                    return
                parsed = self._header(header, at)
            name, size, kind, raw_name = parsed
            if kind in _EXTENSIONS:
                body = self._read(size, at, None)
                if extended_at is None:
                    extended_at = at
                if kind in _PAX:
                    effect = self.pax.get(body) if kind != b"g" else None
                    if effect is None:
                        effect = self._pax(kind, body, at)
                    if long_name is None:
                        long_name = effect[0]
                    if pax_size is None:
                        pax_size = effect[1]
                elif kind == b"L" and long_name is None:
                    long_name = body.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
                continue
            if kind == b"S":
                raise TarFault(f"the member at offset {at} is a GNU sparse file: not supported")
            old_dir = kind == b"\x00" and raw_name.endswith("/")  # a V7 directory, as tarfile reads it
            if long_name is not None:
                name = long_name  # only a regular member's name is used
            if pax_size is not None:
                size = pax_size
            long_name, pax_size, extended_at = None, None, None
            if kind in _REGULAR and not old_dir and want(name):
                yield name, self._read(size, at, name)
            elif kind not in _NO_DATA and not old_dir:
                self._skip(size, at, name)

    def _pax(self, kind: bytes, body: bytes, at: int) -> tuple[str | None, int | None]:
        """(path, size) a pax header sets for the next member (None where it sets none); TarFault if corrupt."""
        records = _pax_records(body, at)
        if kind == b"g":
            bad = sorted(k for k in records if k in ("path", "size") or k.startswith("GNU.sparse."))
            if bad:
                raise TarFault(f"the global pax header at offset {at} sets {bad}: not supported")
            return None, None
        if any(k.startswith("GNU.sparse.") for k in records):
            raise TarFault(f"the pax header at offset {at} describes a sparse file: not supported")
        size = records.get("size")
        if size is not None and not _DIGITS.fullmatch(size):
            raise TarFault(f"the pax header at offset {at} has size {size!r}")
        path = records.get("path")
        effect = (None if path is None else path.rstrip("/"), None if size is None else int(size))
        if len(self.pax) < _CACHE_LIMIT:  # shards repeat one pax header (e.g. mtime) before every member
            self.pax[body] = effect
        return effect

    def _header(self, header: bytes, at: int) -> tuple[str, int, bytes, str]:
        """(name with its ustar prefix, size, type flag, raw name field) of a header block tarfile accepts."""
        numbers = header[100:148] + header[329:345]
        size = self.numbers.get(numbers)
        if size is None:
            for lo, hi in _NUMBER_FIELDS:
                _number(header[lo:hi], at)
            size = _number(header[124:136], at)
            if len(self.numbers) < _CACHE_LIMIT:
                self.numbers[numbers] = size
        field = header[148:156]
        unsigned = 256 + sum(header) - sum(field)
        try:  # the usual "%06o\0 " first: int() of it agrees with tarfile's nti wherever it succeeds
            chksum = int(field[:6], 8) if field[6:] == b"\x00 " else _number(field, at)
        except ValueError:
            chksum = _number(field, at)
        if chksum != unsigned and chksum != unsigned - 256 * sum(b >= 128 for b in header[:148] + header[156:]):
            raise TarFault(f"the header at offset {at} has a bad checksum (a corrupt or misplaced header)")
        kind = header[156:157]
        raw_name = _text(header[0:100])
        name = raw_name
        if kind == b"5" or (kind == b"\x00" and name.endswith("/")):
            name = name.rstrip("/")
        if header[345] and kind not in (b"L", b"K", b"S"):
            prefix = _text(header[345:500])
            name = prefix + "/" + name if prefix else name
        parsed = (name, size, kind, raw_name)
        if kind in _PAX and len(self.headers) < _CACHE_LIMIT:  # pax headers repeat whole (one per member)
            self.headers[header] = parsed
        return parsed

    def _read(self, size: int, at: int, name: str | None) -> bytes:
        """The next `size` bytes and their padding to a whole block; TarFault if the file is shorter."""
        padded = (size + BLOCK - 1) & -BLOCK
        if self.size is not None:
            if self.pos + padded > self.size:
                raise self._cut(size, at, name, self.size)
            block = self.f.read(padded)
            self.pos += len(block)
            if len(block) != padded:
                raise self._cut(size, at, name, self.pos)
            return block[:size] if padded != size else block
        parts, left = [], padded
        while left and (part := self.f.read(min(left, _CHUNK))):
            parts.append(part)
            left -= len(part)
        self.pos += padded - left
        if left:
            raise self._cut(size, at, name, self.pos)
        block = b"".join(parts) if len(parts) != 1 else parts[0]
        return block[:size] if padded != size else block

    def _skip(self, size: int, at: int, name: str) -> None:
        """Pass over a member's data blocks."""
        padded = (size + BLOCK - 1) & -BLOCK
        if self.size is None or self.pos + padded > self.size:
            for start in range(0, padded, _CHUNK):
                self._read(min(padded - start, _CHUNK), at, name)
            return
        self.f.seek(padded, os.SEEK_CUR)
        self.pos += padded

    @staticmethod
    def _cut(size: int, at: int, name: str | None, end: int) -> TarFault:
        what = "the extended header" if name is None else f"member {name!r}"
        return TarFault(f"{what} at offset {at} needs {size} bytes, which runs past the end of the file at {end} "
                        "(cut short or a corrupt size)")

    def _end(self, header: bytes, at: int) -> None:
        """Accept a zero block followed by a second one (or by the end of the file); else TarFault."""
        if not header:
            raise TarFault("the file is empty" if at == 0 else
                           f"the tar ends at offset {at} without an end-of-archive marker (cut short)")
        if len(header) < BLOCK:
            raise TarFault(f"the tar is cut short inside the header at offset {at}")
        after = self.f.read(BLOCK)
        if after.count(0) != len(after):
            raise TarFault(f"a lone zero block at offset {at} is followed by data (a wiped header or a corrupt tar)")


def _number(field: bytes, at: int) -> int:
    """A tar number field read exactly as tarfile's nti reads it (octal text or GNU base-256); else TarFault."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0o377 else n
    try:
        return int(field.split(b"\x00", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:  # UnicodeDecodeError included
        raise TarFault(f"the header at offset {at} has a corrupt number field {field!r}") from None


def _text(field: bytes) -> str:
    """A NUL-terminated name field."""
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(body: bytes, at: int) -> dict[str, str]:
    """keyword -> value of a pax header's records; TarFault unless they fill the body exactly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        match = _PAX_RECORD.match(body, pos)
        end = pos + int(match.group(1)) if match is not None else 0
        if match is None or end <= match.end() or end > len(body) or body[end - 1] != 0x0A:
            raise TarFault(f"the pax header at offset {at} has a corrupt record at byte {pos}")
        records[match.group(2).decode("utf-8", "surrogateescape")] = \
            body[match.end() : end - 1].decode("utf-8", "surrogateescape")
        pos = end
    return records
