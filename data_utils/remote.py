"""Shards and manifests named by URL (webdataset's `pipe:CMD`, `http(s)://`, brace patterns) beside local files.

Local paths keep the fast reader (data_utils/wds.py reads the file in place). A URL is opened with webdataset's
own opener (webdataset.gopen: a shell pipe for `pipe:`, curl for http(s) and the other schemes it knows), spooled
to a temporary file and read with the same strict tar reader, so a stream that is cut, fails or exits non-zero is
a shard fault (ShardReadError) exactly like a truncated local file: the good prefix is kept and the rest skipped.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable, Iterator
from urllib.parse import urljoin

from braceexpand import braceexpand

from .errors import DataError
from .wds import Sample, ShardReadError, iter_tar, open_url

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_TAR_NAME = re.compile(r"([^/\s'\"]+\.tar(?:\.gz|\.bz2|\.xz)?)(?=$|[\s'\"?#;|&)])")
_SPOOL_CHUNK = 1 << 20


def is_url(location: str) -> bool:
    """True for `pipe:CMD` and `scheme://...` (except file://), the locations webdataset's opener reads."""
    return location.startswith("pipe:") or (bool(_SCHEME.match(location)) and not location.startswith("file://"))


def local_path(location: str) -> str:
    """A local location without webdataset's optional `file:` prefix."""
    return re.sub(r"^file://?", "/", location) if location.startswith("file:") else location


def expand(pattern: str) -> list[str]:
    """The locations of a brace pattern (`data-{000000..000009}.tar`), as webdataset expands shard lists."""
    return list(braceexpand(pattern))


def shard_file_name(location: str) -> str:
    """The shard's file name (`data-000000.tar`) of a local path or a URL (the last *.tar word of a pipe: command)."""
    if not is_url(location):
        return os.path.basename(local_path(location))
    found = _TAR_NAME.findall(location.split("?", 1)[0] if _SCHEME.match(location) else location)
    return os.path.basename(found[-1]) if found else location


def sibling(manifest_location: str, name: str) -> str:
    """Where shard `name` (relative) lives next to a dataset.json given by URL."""
    if manifest_location.startswith("pipe:"):
        at = manifest_location.rfind("dataset.json")
        if at < 0:
            raise DataError(f"cannot place shard {name!r} beside {manifest_location!r} (the command does not name "
                            "dataset.json); list the shards by full URL in dataset.json (cogview data-merge --shard-urls)")
        return manifest_location[:at] + name + manifest_location[at + len("dataset.json"):]
    return urljoin(manifest_location, name)


def read_url(url: str) -> bytes:
    """All bytes of a (small) URL, e.g. a remote dataset.json; DataError when the stream fails."""
    try:
        stream = open_url(url)
        try:
            return stream.read()
        finally:
            stream.close()
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {url} ({e}); check the URL or the command and its credentials") from e


def exists(location: str) -> bool:
    """Whether a local shard exists; URLs are assumed present (a missing one is a fault when read)."""
    return is_url(location) or os.path.exists(local_path(location))


def iter_shard(location: str, select: Callable[[str], bool] | None = None) -> Iterator[Sample]:
    """Samples of a shard by local path (read in place) or URL (streamed through webdataset's opener)."""
    if not is_url(location):
        yield from iter_tar(local_path(location), select)
        return
    with tempfile.TemporaryDirectory(prefix="cogview-shard-") as tmp:
        spool = os.path.join(tmp, "shard.tar")
        failure = _download(location, spool)
        key = None
        try:
            for sample in iter_tar(spool, select):
                key = str(sample["__key__"])
                yield sample
        except ShardReadError as e:
            raise ShardReadError(location, e.key, failure or e.cause) from e
        if failure is not None:  # a failed stream is a fault even where the bytes received form a whole tar
            raise ShardReadError(location, key, failure)


def _download(url: str, dest: str) -> BaseException | None:
    """Copy the stream of `url` into dest; the error that ended it early (non-zero exit, cut, refused) or None."""
    with open(dest, "wb") as out:
        try:
            stream = open_url(url)
        except (OSError, ValueError) as e:
            return e
        try:
            shutil.copyfileobj(stream, out, _SPOOL_CHUNK)
        except (OSError, ValueError) as e:
            _close_quietly(stream)
            return e
        try:
            stream.close()  # webdataset's Pipe checks the command's exit status here
        except (OSError, ValueError) as e:
            return e
    return None


def _close_quietly(stream) -> None:  # noqa: ANN001
    """Close a failed stream without masking the first error."""
    try:
        stream.close()
    except (OSError, ValueError):
        pass
