"""Differential fuzz of the .npy fast path (data_utils.shards._npy_load) against np.load on seeded inputs.

Wherever np.load returns an array the fast path returns the same dtype, shape and bytes; wherever np.load
refuses the input the fast path raises ValueError (the error the loader and `data-info --verify` handle).
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest

from data_utils.shards import _npy_load

CASES = int(os.environ.get("COGVIEW_NPY_FUZZ_CASES", "1000"))
_DTYPES = ("<u2", ">u2", "<i4", "<i8", "u1", "<f4", ">f8", "?", "<c8", "<U3", "<u2,<i4")
_SHAPES = ((), (0,), (7,), (1089,), (3, 4), (2, 0, 3), (5, 1))
_BAD_SHAPES = ("(-1,)", "(-1, -1)", "(-3, -2)", "(2**40, 2**40)", "(2**32, 2**32)", "(3.0,)", "(True,)", "3",
               "(1, 2, -1)", "()", "(0, -5)", "(1089,)")
_BAD_DESCRS = ("'<u2'", "'|O'", "'xx'", "'<u2 '", "[('a', '<u2')]", "'V0'", "'<M8[s]'", "1")


def _npy(rng: np.random.Generator) -> bytes:
    """A valid .npy file: version 1.0/2.0, C or Fortran order, one of several dtypes and shapes."""
    dtype = np.dtype(_DTYPES[int(rng.integers(len(_DTYPES)))])
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    array = np.frombuffer(rng.bytes(int(np.prod(shape)) * dtype.itemsize), dtype=dtype).reshape(shape) \
        if dtype.kind != "U" else np.full(shape, "ab", dtype=dtype)
    if rng.random() < 0.2:
        array = np.asfortranarray(array)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=(1, 0) if rng.random() < 0.8 else (2, 0), allow_pickle=False)
    return buf.getvalue()


def _header(descr: str, shape: str) -> bytes:
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    kind = int(rng.integers(7))
    if kind == 0:
        return data[: int(rng.integers(0, len(data) + 1))]
    if kind in (1, 2):  # a bit flip in the header or anywhere
        out = bytearray(data)
        pos = int(rng.integers(min(len(out), 128) if kind == 1 else len(out)))
        out[pos] ^= 1 << int(rng.integers(8))
        return bytes(out)
    if kind == 3:  # a hand-made header over the same payload
        descr = _BAD_DESCRS[int(rng.integers(len(_BAD_DESCRS)))]
        shape = _BAD_SHAPES[int(rng.integers(len(_BAD_SHAPES)))]
        end = 10 + int.from_bytes(data[8:10], "little") if len(data) >= 10 else len(data)
        return _header(descr, shape) + data[end:]
    if kind == 4:
        return data + rng.bytes(int(rng.integers(1, 50)))
    if kind == 5:
        return rng.bytes(int(rng.integers(0, 200)))
    return data


def _reference(data: bytes) -> np.ndarray | None:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:  # ValueError, EOFError, TypeError, ...
        return None


def _check(data: bytes, case: int) -> bool:
    """Compare both readers (twice: the second call may take the cached-header path); True if fast path."""
    ref = _reference(data)
    fast = False
    for _ in range(2):
        if ref is None:
            with pytest.raises(ValueError):
                _npy_load(data)
            continue
        got = _npy_load(data)
        assert got.dtype == ref.dtype and got.shape == ref.shape, case
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(ref).tobytes(), case
        fast = not got.flags.writeable  # np.frombuffer over the field's bytes
    return fast


def test_npy_fast_path_matches_np_load():
    rng = np.random.default_rng(5)
    fast = 0
    for case in range(CASES):
        data = _npy(rng)
        fast += _check(data, case)
        _check(_mutate(rng, data), case)
    assert fast > CASES // 2  # most valid inputs took the fast path, so it is what was compared


@pytest.mark.parametrize("data", [b"", b"\x93NUMPY\x01\x00", b"not an array", _header("'<u2'", "(-1,)") + bytes(6),
                                  _header("'<u2'", "(True,)") + bytes(2), _header("'<u2'", "(2**32, 2**32)")])
def test_npy_fast_path_refuses_what_np_load_refuses(data):
    """Fixed cases: an empty field (EOFError in np.load), a negative or overflowing shape, a bool dimension."""
    assert _reference(data) is None
    with pytest.raises(ValueError):
        _npy_load(data)
