"""The one place that imports webdataset: tar shard writing (atomic), fault-aware tar reading, the URL opener."""
from __future__ import annotations

import os
import re
from typing import BinaryIO, Callable, Iterator

from webdataset.gopen import gopen
from webdataset.writer import TarWriter

from .errors import DataError
from .tarread import read_tar

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


def open_url(url: str) -> BinaryIO:
    """A readable stream of a shard URL from webdataset's opener (`pipe:CMD` through a shell, http(s) through curl,
    ...); a command that exits non-zero raises OSError on a read or at close."""
    return gopen(url, "rb")


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
    """Samples of a tar file grouped by key; raises ShardReadError after the good prefix of a bad tar.

    A read either yields every sample of the archive or ends with ShardReadError (see data_utils/tarread.py);
    the sample open when the damage is met is not yielded (its later members may be the ones lost).
    """
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
    except FileNotFoundError:
        raise
    except Exception as e:  # TarFault, a duplicate, OSError, EOFError and zlib/bz2/lzma errors of a compressed shard
        key = str(current["__key__"]) if current is not None else None
        raise ShardReadError(path, key, e) from e
    if current is not None:
        yield current


_META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def _entries(path: str, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of a tar's regular files, as webdataset's tar_file_iterator yields them (meta skipped)."""

    def want(fname: str) -> bool:
        if ("/" not in fname and fname.startswith("__") and fname.endswith("__")) or _META_NAME.match(fname):
            return False
        return select is None or select(fname)

    return read_tar(path, want)
