"""Growing a checkpoint's learned position table for a longer sequence or a bigger image grid (e.g. 8x8 -> 12x12).

A text-to-image sequence is `[ROI1] text [BASE] [BOI1] codes [EOI1]` with positions 0, 1, 2, ...; with the
longest caption the g x g image codes take the LAST g*g rows of a table of seq_len - 1 rows. Growing keeps
the rows before the image (text and commands) as they are, repeating the last of them when there are more,
and fills the new last g'*g' rows by bilinear interpolation (align_corners=True) of the old image rows laid
out as a g x g grid, so a new code starts near the learned embedding of the same place in the picture.
When the checkpoint does not record its grid, the whole table is linearly interpolated (1-D) instead.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from megatron_cogview.checkpoint.convert import save_rank, staged_dir
from megatron_cogview.checkpoint.layout import (
    CheckpointError,
    CheckpointMeta,
    model_states_file,
    write_meta,
    write_trackers,
)
from megatron_cogview.checkpoint.load import read_module
from megatron_cogview.checkpoint.source import CheckpointSource, Log

POSITION_KEY = "transformer.position_embeddings.weight"


def square_side(n: int) -> int | None:
    """g when n == g*g (g >= 1), else None."""
    g = math.isqrt(n) if n > 0 else 0
    return g if g > 0 and g * g == n else None


def check_growth(old_rows: int, new_rows: int, where: str) -> bool:
    """True when the table must grow; refuses to shrink it (one line)."""
    if new_rows < old_rows:
        raise CheckpointError(f"{where} has a position table of {old_rows} rows and max_position_embeddings "
                              f"{new_rows} would shrink it (positions would be lost); use at least {old_rows}")
    return new_rows > old_rows


def _interpolate_1d(table: torch.Tensor, rows: int) -> torch.Tensor:
    """[p, h] -> [rows, h]: linear interpolation along the rows (ends kept)."""
    x = table.t().unsqueeze(0)  # [1, h, p]
    return F.interpolate(x, size=rows, mode="linear", align_corners=True)[0].t()


def _grid_mode(p: int, rows: int, old_grid: int | None, new_grid: int | None, old_end: int, new_end: int) -> bool:
    """Whether the image blocks fit the tables (else the 1-D fallback is used)."""
    return (old_grid is not None and new_grid is not None and old_grid**2 < old_end <= p
            and new_grid**2 < new_end <= rows)


def grow_position_table(
    table: torch.Tensor, rows: int, old_grid: int | None, new_grid: int | None,
    old_end: int | None = None, new_end: int | None = None,
) -> torch.Tensor:
    """The table [p, h] grown to [rows, h] (see the module doc); computed in fp64, returned in table's dtype.

    old_end / new_end: rows the old / new data use (seq_len - 1; default the whole table): the image block
    ends there; rows after it (never trained) are carried over after the new block."""
    p, h = table.shape
    if rows < p:
        raise CheckpointError(f"a position table of {p} rows cannot shrink to {rows}")
    old_end, new_end = old_end or p, new_end or rows
    src = table.detach().to("cpu", torch.float64)
    if not _grid_mode(p, rows, old_grid, new_grid, old_end, new_end):
        return _interpolate_1d(src, rows).to(table.dtype)
    assert old_grid is not None and new_grid is not None
    old_text, new_text = old_end - old_grid**2, new_end - new_grid**2
    image = src[old_text:old_end].t().reshape(1, h, old_grid, old_grid)  # [1, h, g, g]: row-major codes
    grown = F.interpolate(image, size=(new_grid, new_grid), mode="bilinear", align_corners=True)
    grown = grown.reshape(h, new_grid * new_grid).t()  # [g'*g', h]
    text = _fit(src[:old_text], new_text)
    tail = _fit(src[old_end:] if old_end < p else src[p - 1 :], rows - new_end)
    return torch.cat([text, grown, tail]).to(table.dtype)


def _fit(block: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of block, its last row repeated when it has fewer."""
    return torch.cat([block[:n], block[-1:].expand(max(0, n - block.shape[0]), block.shape[1])])


def grow_module(
    module: dict[str, torch.Tensor], rows: int, old_grid: int | None, new_grid: int | None,
    old_end: int | None = None, new_end: int | None = None,
) -> dict[str, torch.Tensor]:
    """A state dict with its position table grown to `rows` (new dict; other tensors shared)."""
    if POSITION_KEY not in module:
        raise CheckpointError(f"the checkpoint has no {POSITION_KEY!r}; cannot grow its position table")
    grown = grow_position_table(module[POSITION_KEY], rows, old_grid, new_grid, old_end, new_end)
    return {**module, POSITION_KEY: grown}


def describe_growth(old_rows: int, rows: int, old_grid: int | None, new_grid: int | None,
                    old_end: int | None = None, new_end: int | None = None) -> str:
    """The log line of a growth: how many rows, and how the new rows were initialised."""
    old_end, new_end = old_end or old_rows, new_end or rows
    if not _grid_mode(old_rows, rows, old_grid, new_grid, old_end, new_end):
        how = "1-D linear interpolation over the whole table (no recorded image grid that fits)"
    else:
        assert old_grid is not None and new_grid is not None
        how = (f"text rows kept, image rows {old_end - old_grid**2}..{old_end - 1} by bilinear interpolation of "
               f"the {old_grid}x{old_grid} grid to {new_grid}x{new_grid} (rows {new_end - new_grid**2}..{new_end - 1})")
    return f"position table grown {old_rows} -> {rows} rows: {how}"


def recorded_grid(tokenizers: dict[str, Any]) -> int | None:
    """The image grid side a checkpoint records (None for older checkpoints)."""
    grid = tokenizers.get("image_grid")
    return int(grid) if isinstance(grid, int) and grid > 0 else None


def used_rows(tokenizers: dict[str, Any], table_rows: int) -> int:
    """Rows the checkpoint's data used: its seq_len - 1 (when recorded), at most the table."""
    seq_len = tokenizers.get("seq_len")
    return min(int(seq_len) - 1, table_rows) if isinstance(seq_len, int) and seq_len > 1 else table_rows


def default_new_grid(old_end: int, rows: int, old_grid: int | None) -> int | None:
    """The grid a growth to `rows` implies when none is given: the one that keeps the rows before the image."""
    if old_grid is None or old_grid**2 >= old_end:
        return old_grid
    return square_side(rows - (old_end - old_grid**2)) or old_grid


def write_grown(source: CheckpointSource, save: str | Path, rows: int, new_grid: int | None, log: Log) -> CheckpointMeta:
    """`cogview convert --max-position-embeddings`: `source` (a CheckpointSource) written to `save` with
    its position table grown to `rows` (every tp rank; ZeRO-3 consolidated); returns the new CheckpointMeta."""
    old_rows = source.config.max_position_embeddings
    if not check_growth(old_rows, rows, f"checkpoint {str(source.load)!r}"):
        raise CheckpointError(f"checkpoint {str(source.load)!r} already has {rows} position rows; nothing to grow")
    old_grid, old_end = recorded_grid(source.meta.tokenizers), used_rows(source.meta.tokenizers, old_rows)
    grid = new_grid or default_new_grid(old_end, rows, old_grid)
    if grid is not None and grid * grid >= rows:
        raise CheckpointError(f"--image-grid {grid} needs more than {grid * grid} positions; raise "
                              f"--max-position-embeddings above {grid * grid} or use a smaller grid")
    new_end = min(rows, old_end - (old_grid or 0) ** 2 + (grid or 0) ** 2) if grid and old_grid else rows
    tokenizers = {**source.meta.tokenizers, **({"image_grid": grid} if grid is not None else {}),
                  **({"seq_len": new_end + 1} if "seq_len" in source.meta.tokenizers else {})}
    meta = CheckpointMeta(model=replace(source.config, max_position_embeddings=rows).to_dict(),
                          tensor_parallel_size=source.tp_size, iteration=source.iteration, tokenizers=tokenizers,
                          extra={**source.meta.extra, "positions_grown_from": old_rows})
    log(describe_growth(old_rows, rows, old_grid, grid, old_end, new_end))
    with staged_dir(save) as out:
        for rank in range(source.tp_size):
            module = read_module(source.load, source.iteration, rank, log=log)
            module = grow_module(module, rows, old_grid, grid, old_end, new_end)
            nbytes = save_rank(model_states_file(out, source.iteration, rank), module, meta, source.iteration)
            log(f"wrote tp rank {rank + 1}/{source.tp_size} ({nbytes / 2**20:.1f} MiB, verified)")
        write_meta(out, meta.iteration, meta)
        write_trackers(out, meta.iteration)
    return meta
