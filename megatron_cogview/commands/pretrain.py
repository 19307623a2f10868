"""Pre-training entry (`pretrain_gpt2.py`, `cogview train`): joins data, model, engine and loop."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from data_utils.errors import DataError
from data_utils.loader import SampleTransform, build_loader
from data_utils.remote import is_url, read_url
from data_utils.shards import Manifest
from megatron_cogview.arguments import Args, parse_args
from megatron_cogview.checkpoint.layout import CheckpointError, CheckpointMeta, read_meta
from megatron_cogview.config import ConfigError, ModelConfig, TrainConfig
from megatron_cogview.errors import exit_on_user_error
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.state import ParallelState, default_device
from megatron_cogview.training.checkpointing import has_checkpoint, resume_iteration
from megatron_cogview.training.engine import (
    MergeResult,
    build_ds_config,
    create_engine,
    init_distributed,
    merge_ds_config,
    read_ds_json,
)
from megatron_cogview.training.faults import first_line, from_collective
from megatron_cogview.training.logger import TrainLogger
from megatron_cogview.training.loop import Trainer
from megatron_cogview.training.objective import Objective
from megatron_cogview.training.save_lock import prepare_save_folder
from tokenization.layout import TokenLayout


def _manifest(paths: list[str]) -> Manifest:
    if not paths:
        raise ConfigError("no training data: pass --train-data DIR (a folder made by `cogview preprocess`)")
    for p in paths:
        if not is_url(p) and not (Path(p) / "dataset.json").is_file():
            raise DataError(f"{p!r} has no dataset.json: make it with `cogview preprocess` (or check the path)")
    return Manifest.load(paths[0])


def tokenizer_record(args: Args, manifest: Manifest) -> dict[str, Any]:
    """What the checkpoint records about tokens: layout, fingerprints, and the tokenizer files if given."""
    rec: dict[str, Any] = {
        "layout": manifest.layout, "layout_fingerprint": manifest.layout_fingerprint,
        "text_fingerprint": manifest.text_tokenizer_fingerprint, "image_fingerprint": manifest.image_tokenizer_fingerprint,
        "num_tokens": TokenLayout.from_dict(manifest.layout).num_tokens, "seq_len": manifest.seq_len,
        "task": manifest.task, "image_size": manifest.settings.get("image_size"),
    }
    grid = data_image_grid(manifest)
    if grid is not None:
        rec["image_grid"] = grid  # what position-table growth and generation read back
    if args.data.text_tokenizer:
        from tokenization.text import TextTokenizer

        fp = TextTokenizer(args.data.text_tokenizer).fingerprint()
        if fp != manifest.text_tokenizer_fingerprint:
            raise DataError(f"the shards were made with another text tokenizer than {args.data.text_tokenizer!r}; "
                            "re-run `cogview preprocess` with it or pass the one the data was made with")
        rec["text"] = os.path.abspath(args.data.text_tokenizer)
    if args.data.image_tokenizer:
        from tokenization.image import ImageTokenizer

        fp = ImageTokenizer.from_pretrained(args.data.image_tokenizer).fingerprint()
        if fp != manifest.image_tokenizer_fingerprint:
            raise DataError(f"the shards were made with another image tokenizer than {args.data.image_tokenizer!r}; "
                            "re-run `cogview preprocess` with it or pass the one the data was made with")
        rec["image"] = os.path.abspath(args.data.image_tokenizer)
    return rec


def data_image_grid(manifest: Manifest) -> int | None:
    """Side g of the g x g image of the data's first sample (None for super-resolution data or non-square counts)."""
    from data_utils.remote import iter_shard
    from data_utils.shards import decode_sample
    from megatron_cogview.checkpoint.positions import square_side

    if manifest.task == "superres" or not manifest.shards or is_url(manifest.shard_paths()[0]):
        return None  # (a remote stream is not opened just for this)
    layout = TokenLayout.from_dict(manifest.layout)
    for raw in iter_shard(manifest.shard_paths()[0]):
        tokens = decode_sample(raw, manifest.seq_len).tokens
        is_image = (tokens >= layout.image_offset) & (tokens < layout.image_offset + layout.num_image_tokens)
        return square_side(int(is_image.sum()))
    return None


def data_fingerprint(paths: list[str], weights: Any, max_shards: int = 64, head: int = 1 << 16) -> str:
    """Hash of the training data by content, not path: the mixing weights, each dataset.json, and the size and
    first 64 KiB of up to 64 evenly spaced shards per dataset (cheap even for many shards on a network disk)."""
    h = hashlib.sha256(json.dumps(weights, sort_keys=True).encode())
    for p in paths:
        text = read_url(p).decode("utf-8") if is_url(p) else (Path(p) / "dataset.json").read_text(encoding="utf-8")
        h.update(json.dumps(json.loads(text), sort_keys=True).encode())
        shards = Manifest.load(p).shard_paths()
        for shard in shards[:: max(1, -(-len(shards) // max_shards))]:
            if is_url(shard):  # a remote shard is known by its location (its count is in the manifest above)
                h.update(shard.encode())
                continue
            try:
                with open(shard, "rb") as f:
                    h.update(f"{os.fstat(f.fileno()).st_size}:".encode() + f.read(head))
            except FileNotFoundError:
                h.update(b"missing")  # the loader names the missing shard next
    return h.hexdigest()[:16]


def _check_resume_tokens(load: str, rec: dict[str, Any], data_fp: str) -> None:
    if not load or not has_checkpoint(load):
        return
    it, meta = read_meta(load, resume_iteration(load))
    saved_fp = meta.extra.get("data_fingerprint")
    if saved_fp is not None and saved_fp != data_fp:
        raise DataError(f"the training data differs from the data checkpoint {it} in {load!r} was trained on "
                        f"(data fingerprint {data_fp} vs {saved_fp}): its saved data position would point at other "
                        "samples; resume with the same --train-data, or start a new run from its weights with "
                        "--finetune-from")
    old = meta.tokenizers
    for key in ("layout_fingerprint", "text_fingerprint", "image_fingerprint"):
        if key in old and old[key] != rec[key]:
            raise DataError(f"the training data was made with other tokenizers than checkpoint {load!r} "
                            f"({key.replace('_', ' ')} differs); use data made with the checkpoint's tokenizers")


def _loaders(args: Args, state: ParallelState, train: TrainConfig, manifest: Manifest,
             transform: SampleTransform | None = None):
    """Train and validation sources on tp rank 0 (peers get broadcasts)."""
    d = args.data
    if state.tp_rank != 0:
        return None, None, bool(d.valid_data or d.val_shards)
    common = dict(batch_size=train.micro_batch_size, seed=train.seed, num_workers=d.num_workers,
                  shuffle_buffer=d.shuffle_buffer, transform=transform,
                  layout_fingerprint=manifest.layout_fingerprint, text_tokenizer_fingerprint=manifest.text_tokenizer_fingerprint,
                  image_tokenizer_fingerprint=manifest.image_tokenizer_fingerprint, seq_len=manifest.seq_len)
    if d.num_workers and torch.cuda.is_available():
        common["multiprocessing_context"] = "spawn"
    train_split = dict(split="train", val_shards=d.val_shards) if d.val_shards else {}
    source = build_loader(d.paths("train"), state.dp_rank, state.dp_size, weights=d.weights(), **common,
                          **train_split)
    valid = None
    if d.valid_data:
        valid = build_loader(d.paths("valid"), state.dp_rank, state.dp_size, **common)
    elif d.val_shards:
        valid = build_loader(d.paths("train"), state.dp_rank, state.dp_size, split="val", val_shards=d.val_shards,
                             **common)
    return source, valid, valid is not None


@dataclasses.dataclass(frozen=True)
class Task:
    """What a fine-tuning task (megatron_cogview/finetune/*.py) changes in pre-training; the defaults are pre-training itself."""

    sample_transform: SampleTransform | None = None  # each sample in the loader, before collate (picklable)
    objective: Callable[[TokenLayout, float], Objective] | None = None  # (layout, txt_loss_scale) -> loss weights
    positions_needed: Callable[[Manifest], int] | None = None  # position-table rows the data needs

    def make_objective(self, layout: TokenLayout, txt_loss_scale: float) -> Objective:
        if self.objective is not None:
            return self.objective(layout, txt_loss_scale)
        return Objective.from_layout(layout, txt_loss_scale)


def _finetune_weights(model: CogViewModel, train: TrainConfig, state: ParallelState, logger: TrainLogger,
                      new_grid: int | None = None, new_end: int | None = None) -> None:
    """Load another checkpoint's weights (same shape and tp) before the engine exists: works for every ZeRO stage.

    A larger max_position_embeddings than the checkpoint's grows its position table (new_grid: the data's
    image grid side, new_end: the data's seq_len - 1; see checkpoint/positions.py); a smaller one is refused."""
    if not train.finetune_from or (train.load and has_checkpoint(train.load)):
        return
    from megatron_cogview.checkpoint.load import read_module

    it, meta = read_meta(train.finetune_from)
    if meta.tensor_parallel_size != state.tp_size:
        raise CheckpointError(f"--finetune-from {train.finetune_from!r} has tensor-parallel size "
                              f"{meta.tensor_parallel_size}, this run {state.tp_size}; convert it with cogview convert "
                              f"--target-tp {state.tp_size}")
    module = read_module(train.finetune_from, it, state.tp_rank, log=logger.info)  # ZeRO-3: consolidated here
    module = _grown_positions(module, model.config.max_position_embeddings, meta, new_grid, new_end,
                              train.finetune_from, logger)
    try:
        model.load_state_dict(module)
    except RuntimeError as e:
        raise CheckpointError(f"--finetune-from {train.finetune_from!r} does not fit this model: "
                              f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    logger.info(f"fine-tuning from the weights of {train.finetune_from} (iteration {it})")


def _grown_positions(module: dict[str, torch.Tensor], rows: int, meta: CheckpointMeta, new_grid: int | None,
                     new_end: int | None, where: str, logger: TrainLogger) -> dict[str, torch.Tensor]:
    """The checkpoint's weights with the position table grown to `rows` when it has fewer (refused if more)."""
    from megatron_cogview.checkpoint import positions as pos

    if pos.POSITION_KEY not in module or not pos.check_growth(module[pos.POSITION_KEY].shape[0], rows,
                                                              f"--finetune-from {where!r}"):
        return module
    old_rows, old_grid = module[pos.POSITION_KEY].shape[0], pos.recorded_grid(meta.tokenizers)
    old_end = pos.used_rows(meta.tokenizers, old_rows)
    logger.info(pos.describe_growth(old_rows, rows, old_grid, new_grid, old_end, new_end))
    return pos.grow_module(module, rows, old_grid, new_grid, old_end, new_end)


def run(argv: Sequence[str] | None = None, task: Task | None = None) -> int:
    """Parse, build and train; returns the exit status. `task` changes samples, loss weights and positions."""
    task = task or Task()
    args = parse_args(argv)
    init_distributed(args.parallel.backend, timeout_s=int(args.parallel.distributed_timeout_minutes * 60))
    state = ParallelState.build(args.parallel.tensor_parallel_size)
    manifest = _manifest(args.data.paths("train"))
    layout = dataclasses.replace(TokenLayout.from_dict(manifest.layout), tp_size=state.tp_size)
    model_cfg = args.model_config(vocab_size=layout.vocab_size)
    needed = manifest.seq_len - 1
    if task.positions_needed is not None:  # e.g. super-resolution restarts positions at [ROI2]
        needed = task.positions_needed(manifest)
    if model_cfg.max_position_embeddings < needed:
        raise ConfigError(f"the data needs {needed} positions but max_position_embeddings is "
                          f"{model_cfg.max_position_embeddings}; raise --max-position-embeddings")
    train = args.train.resolve_batch(state.dp_size)
    user_ds = read_ds_json(args.deepspeed_config) if args.deepspeed_config else {}
    merged = merge_ds_config(train, user_ds, args.explicit)
    train = merged.train
    tbs = user_ds.get("train_batch_size")
    per_step = train.micro_batch_size * train.gradient_accumulation_steps * state.dp_size
    if isinstance(tbs, int) and tbs != per_step:
        raise ConfigError(f"train_batch_size={tbs} in the DeepSpeed config is not micro_batch_size x accumulation x "
                          f"data-parallel size = {per_step}; fix one of them")
    rec = tokenizer_record(args, manifest)
    data_fp = data_fingerprint(args.data.paths("train"), args.data.weights())
    _check_resume_tokens(train.load, rec, data_fp)
    warnings: list[str] = []
    lock = prepare_save_folder(train.save, train.load, state, warnings.append) if train.save else None
    try:
        return _train(args, state, manifest, layout, model_cfg, train, merged, user_ds, rec, data_fp, warnings,
                      task)
    finally:
        if lock is not None:
            lock.release()


def _train(args: Args, state: ParallelState, manifest: Manifest, layout: TokenLayout, model_cfg: ModelConfig,
           train: TrainConfig, merged: MergeResult, user_ds: dict[str, Any], rec: dict[str, Any], data_fp: str,
           warnings: list[str], task: Task) -> int:
    """Build the loaders, model and engine, resume, and train (with --save locked)."""
    per_step = train.micro_batch_size * train.gradient_accumulation_steps * state.dp_size
    logger = TrainLogger(state.rank == 0, train.train_iters, 0, log_dir=train.save, tensorboard_dir=train.tensorboard_dir,
                         wandb_project=train.wandb_project, wandb_run_name=train.wandb_run_name,
                         run_config={"model": model_cfg.to_dict(), "train": dataclasses.asdict(train)})
    for line in merged.decisions:
        logger.info(f"config: {line}")
    for line in warnings:
        logger.info(f"warning: {line}")
    logger.info(f"world {state.world_size} = tp {state.tp_size} x dp {state.dp_size}; model "
                f"{model_cfg.num_layers} layers x {model_cfg.hidden_size}, vocab "
                f"{model_cfg.vocab_size}; global batch {per_step}; precision {train.precision}; ZeRO {train.zero_stage}")
    source, valid, has_valid = _loaders(args, state, train, manifest, task.sample_transform)
    model = CogViewModel(model_cfg, state, device=default_device())
    _finetune_weights(model, train, state, logger, rec.get("image_grid"), manifest.seq_len - 1)
    engine, _ = create_engine(model, state, train, build_ds_config(train, user_ds))
    meta = CheckpointMeta(model=model_cfg.to_dict(), tensor_parallel_size=state.tp_size, tokenizers=rec,
                          extra={"data_fingerprint": data_fp})
    objective = task.make_objective(layout, train.txt_loss_scale)
    trainer = Trainer(engine=engine, model=model, state=state, train=train, meta=meta, source=source,
                      objective=objective, valid_source=valid, has_validation=has_valid, logger=logger)
    trainer.resume()
    progress = trainer.run()
    logger.info(f"done: iteration {progress.iteration}, skipped steps {progress.skipped_steps}")
    logger.close()
    return 0


def _prefix() -> str:
    rank = os.environ.get("RANK", "0")
    return "pretrain_gpt2.py" + (f" [rank {rank}]" if os.environ.get("WORLD_SIZE", "1") != "1" else "")


def main(argv: Sequence[str] | None = None, task: Task | None = None) -> int:
    """Run, turning user errors into one line and exit status 2."""
    try:
        return exit_on_user_error(_prefix, lambda: run(argv, task))
    except RuntimeError as e:
        if not from_collective(e):
            raise
        # a peer died (connection reset) or hung (--distributed-timeout-minutes): one line, not a traceback
        print(f"{_prefix()}: error: lost contact with another rank ({first_line(e)}); another process died or "
              f"hung (see its log); relaunch with --load pointing at your --save folder to resume from the last "
              "complete checkpoint", file=sys.stderr)
        return 1
