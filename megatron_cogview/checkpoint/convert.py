"""Checkpoint conversion: change the tensor-parallel size, consolidate ZeRO shards, import original CogView.

Every conversion streams: each output tp rank is built from memory-mapped input shards, tensor by
tensor, saved, verified bit for bit by reloading, and released before the next rank; peak memory is
about one output shard plus the input pages it touches, not the model. Output goes to a temporary
directory beside --save that is renamed into place only once complete (trackers written last).
Optimizer state is dropped (it is laid out for the old parallel layout), except with
`consolidate(..., keep_optimizer=True)` at an unchanged tp size, where the ZeRO shards are copied.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch

from megatron_cogview.checkpoint.layout import (
    CheckpointError,
    CheckpointMeta,
    iteration_dir,
    model_states_file,
    write_meta,
    write_trackers,
)
from megatron_cogview.checkpoint.reshard import (
    Shapes,
    check_target_tp,
    expected_shapes,
    reslice_param,
    target_vocab_size,
)
from megatron_cogview.checkpoint.source import (
    CheckpointSource,
    Log,
    MappedShards,
    check_module,
    load_checkpoint_file,
    rank_files,
    stderr_log,
)
from megatron_cogview.checkpoint.zero import all_optimizer_files, gather_fp32
from megatron_cogview.config import ModelConfig


# ---- output directory handling ----------------------------------------------------------------------
def check_save_dir(save: Path) -> None:
    """CheckpointError unless `save` is absent or an empty directory (conversion never overwrites)."""
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise CheckpointError(f"--save {str(save)!r} already exists and is not empty; choose a new directory")


@contextlib.contextmanager
def staged_dir(save: str | Path) -> Iterator[Path]:
    """A temporary directory beside `save`, renamed to `save` when the block succeeds, removed otherwise."""
    save = Path(save).absolute()
    check_save_dir(save)
    save.parent.mkdir(parents=True, exist_ok=True)
    tmp = save.parent / f".{save.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        check_save_dir(save)
        os.replace(tmp, save)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype and bytes (NaNs included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)) if a.numel() else True


def save_rank(path: Path, module: dict[str, torch.Tensor], meta: CheckpointMeta, iteration: int) -> int:
    """Save one tp rank's model states in the training layout, reload and compare bit for bit; bytes written."""
    # `module` is emptied while verifying, so its memory is released as the reloaded pages come in.
    states: dict[str, Any] = {
        "module": module, "iteration": iteration, "cogview": meta.to_dict(),
        # the bookkeeping DeepSpeed's load_checkpoint reads even with load_module_only=True
        "dp_world_size": 1, "mp_world_size": meta.tensor_parallel_size, "global_steps": iteration, "skipped_steps": 0,
        "optimizer": None, "lr_scheduler": None, "buffer_names": [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(states, path)
    del states
    nbytes = 0
    reloaded = load_checkpoint_file(path)["module"]
    if set(reloaded) != set(module):
        raise CheckpointError(f"verification of {path} failed: keys differ after reload (disk full or damaged?)")
    for name in list(module):
        if not _same_bits(module[name], reloaded[name]):
            raise CheckpointError(f"verification of {path} failed: {name} differs after reload (disk full or damaged?)")
        nbytes += module.pop(name).nbytes
    return nbytes


def _finish(out: Path, meta: CheckpointMeta) -> None:
    """Write cogview_meta.json and then both trackers (last, so they only name a complete checkpoint)."""
    write_meta(out, meta.iteration, meta)
    write_trackers(out, meta.iteration)


# ---- tensor-parallel resharding ---------------------------------------------------------------------
def target_config(source: CheckpointSource, target_tp: int) -> ModelConfig:
    """The source's model configuration with the vocabulary re-padded for target_tp (checked to fit)."""
    config = source.config
    check_target_tp(config, target_tp)
    vocab = target_vocab_size(config.vocab_size, target_tp, source.num_tokens)
    new = replace(config, vocab_size=vocab)
    new.check_tensor_parallel(target_tp)
    return new


def write_resharded(
    source: CheckpointSource, out: Path, target_tp: int, log: Log = stderr_log, origin: str | None = None
) -> CheckpointMeta:
    """Write `source` at tensor-parallel size target_tp under `out` (same iteration); returns the new meta."""
    config = target_config(source, target_tp)
    shapes = expected_shapes(config, target_tp)
    meta = CheckpointMeta(
        model=config.to_dict(), tensor_parallel_size=target_tp, iteration=source.iteration,
        tokenizers=dict(source.meta.tokenizers),
        extra={**source.meta.extra, "converted_from": {"path": origin or str(source.load), "tensor_parallel_size": source.tp_size,
                                                        "vocab_size": source.config.vocab_size}},
    )
    if config.vocab_size != source.config.vocab_size:
        log(f"re-padding the vocabulary {source.config.vocab_size} -> {config.vocab_size} rows for tp {target_tp}")
    for rank in range(target_tp):
        module = reshard_rank(source, shapes, target_tp, rank, config.vocab_size)
        nbytes = save_rank(model_states_file(out, source.iteration, rank), module, meta, source.iteration)
        log(f"wrote tp rank {rank + 1}/{target_tp} ({nbytes / 2**20:.1f} MiB, verified)")
    _finish(out, meta)
    return meta


def reshard_rank(
    source: CheckpointSource, shapes: Shapes, target_tp: int, rank: int, vocab: int
) -> dict[str, torch.Tensor]:
    """Output tp rank `rank`'s state dict, built from the memory-mapped input shards."""
    inputs = MappedShards(source)
    module: dict[str, torch.Tensor] = {}
    for name, (shape, rule) in shapes.items():
        new_size = vocab if rule.kind == "vocab" else None
        tensor = reslice_param(inputs[name], rule, target_tp, rank, new_size)
        if tuple(tensor.shape) != shape:
            raise RuntimeError(f"resharding {name} gave shape {list(tensor.shape)}, expected {list(shape)}")
        module[name] = tensor
    return module


def reshard(
    source: CheckpointSource, save: str | Path, target_tp: int | None = None, log: Log = stderr_log
) -> CheckpointMeta:
    """Convert `source` to tensor-parallel size target_tp (default: unchanged) as a new checkpoint at `save`.

    A ZeRO-3 checkpoint holds its weights only in the optimizer shards, so it is consolidated (fp32) instead.
    """
    if source.partitioned:
        log(f"{source.load} is a ZeRO-3 checkpoint: gathering its partitioned parameters (fp32)")
        return consolidate(source, save, target_tp=target_tp, log=log)
    tp = source.tp_size if target_tp is None else target_tp
    target_config(source, tp)  # fail on a bad tp before creating anything
    with staged_dir(save) as out:
        return write_resharded(source, out, tp, log)


# ---- ZeRO consolidation ---------------------------------------------------------------------------
def consolidated_rank(source: CheckpointSource, tp_rank: int) -> dict[str, torch.Tensor]:
    """Full fp32 weights of one tp rank, merged over data-parallel ZeRO shards by DeepSpeed's own reader."""
    return gather_fp32(iteration_dir(source.load, source.iteration), tp_rank, trust_pickle=source.trust_pickle)


def consolidate(
    source: CheckpointSource,
    save: str | Path,
    *,
    target_tp: int | None = None,
    keep_optimizer: bool = False,
    log: Log = stderr_log,
) -> CheckpointMeta:
    """Merge ZeRO shards into full fp32 weights per tp rank (then reshard to target_tp when given)."""
    tp = source.tp_size if target_tp is None else target_tp
    target_config(source, tp)
    if keep_optimizer and tp != source.tp_size:
        raise CheckpointError("--keep-optimizer needs an unchanged tp size: ZeRO optimizer shards cannot be resharded")
    if keep_optimizer and source.partitioned:
        raise CheckpointError("--keep-optimizer does not apply to a ZeRO-3 checkpoint (its optimizer shards only fit "
                              "its partitioned model files); resume ZeRO-3 training from the original, drop the flag")
    shapes = source.shapes()
    with staged_dir(save) as out:
        stage = out if tp == source.tp_size else out / ".fp32"
        meta = replace(source.meta, extra={**source.meta.extra, "consolidated_from": str(source.load)})
        for rank in range(source.tp_size):
            module = consolidated_rank(source, rank)
            check_module(module, shapes, source.files[rank])
            module = {name: module[name] for name in shapes}  # the model's order, not the optimizer groups'
            nbytes = save_rank(model_states_file(stage, source.iteration, rank), module, meta, source.iteration)
            log(f"consolidated tp rank {rank + 1}/{source.tp_size} ({nbytes / 2**20:.1f} MiB fp32, verified)")
        if keep_optimizer:
            for p in all_optimizer_files(iteration_dir(source.load, source.iteration)):
                shutil.copy2(p, iteration_dir(stage, source.iteration) / p.name)
        _finish(stage, meta)
        if stage is out:
            return meta
        fp32 = CheckpointSource(load=stage, iteration=source.iteration,
                                files=rank_files(iteration_dir(stage, source.iteration)), meta=meta, log=log)
        result = write_resharded(fp32, out, tp, log, origin=str(source.load))
        shutil.rmtree(stage)
        return result

