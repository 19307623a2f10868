"""VQ-VAE training loop: DataLoader workers, progress bar, resumable checkpoints, usage/PSNR logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tokenization.errors import TokenizationError
from tokenization.image_files import ImageSource
from tokenization.vqvae.config import TrainOptions, VQVAEConfig  # TrainOptions lives there (no torch)
from tokenization.vqvae.data import ImageFolderDataset, ResumableBatchSampler
from tokenization.vqvae.model import VQVAE
from tokenization.vqvae.serialization import save_pretrained

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


@dataclass
class UsageMeter:
    """Running metrics over one log window."""

    codebook_size: int
    counts: torch.Tensor | None = None
    sums: torch.Tensor | None = None  # [3]: reconstruction loss, commitment loss, MSE in [0, 1] pixels
    steps: int = 0

    def add(self, counts: torch.Tensor, rec: torch.Tensor, commit: torch.Tensor, mse01: torch.Tensor) -> None:
        """Accumulate one step (stays on the device: no host sync until summary)."""
        values = torch.stack([rec.detach().float(), commit.detach().float(), mse01.detach().float()])
        self.counts = counts.detach().clone() if self.counts is None else self.counts + counts.detach()
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1

    def all_reduce(self) -> None:
        """Turn this rank's window into the window over all ranks (counts summed, means averaged)."""
        assert self.counts is not None and self.sums is not None
        dist.all_reduce(self.counts)
        dist.all_reduce(self.sums)
        self.sums = self.sums / dist.get_world_size()

    def summary(self) -> dict[str, float]:
        """Means over the window, PSNR, perplexity and the fraction of codes used."""
        assert self.counts is not None and self.sums is not None and self.steps > 0
        probs = self.counts.float() / self.counts.sum().clamp_min(1)
        perplexity = math.exp(float(-(probs * probs.clamp_min(1e-12).log()).sum()))
        rec, commit, mse = (float(v) / self.steps for v in self.sums.cpu())
        return {
            "rec_loss": rec,
            "commit_loss": commit,
            "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-10)),
            "perplexity": perplexity,
            "codes_used": float((self.counts > 0).float().mean()),
        }


@dataclass
class TrainResult:
    """What a finished run reports."""

    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    out: Path = Path(".")
    model: VQVAE | None = None  # the trained model (on every rank of a multi-process run)


@dataclass(frozen=True)
class _World:
    """This process's place among the data-parallel training processes (one of one without a launcher)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    created: bool = False  # this call started the process group (and ends it)


def _join_world(device: str) -> _World:
    """Join torch.distributed when a launcher (torchrun, deepspeed, srun) started several processes."""
    if dist.is_available() and dist.is_initialized():
        return _World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _World()
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return _World(dist.get_rank(), dist.get_world_size(), local, True)


def _device(name: str, world: _World = _World()) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.size > 1:
        name = f"cuda:{world.local_rank}"  # one GPU per process
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise TokenizationError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TokenizationError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def _validate(options: TrainOptions) -> None:
    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(options, name) < 1:
            raise TokenizationError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.workers < 0 or options.warmup_steps < 0:
        raise TokenizationError("--workers and --warmup-steps must be >= 0")
    if options.lr <= 0:
        raise TokenizationError(f"--lr must be positive, got {options.lr}")


def _lr_scale(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _save_checkpoint(
    path: Path, model: VQVAE, optimizer: torch.optim.Optimizer, step: int, options: TrainOptions, batch_size: int
) -> None:
    """Everything needed to continue bit for bit: weights, codebook EMA, optimiser, RNG, data position."""
    state = {
        "step": step,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "seed": options.seed,
        "batch_size": batch_size,  # global: per process x processes
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint written by train_vqvae (tensors and plain values only)."""
    if not path.is_file():
        raise TokenizationError(f"no checkpoint at {str(path)!r} to resume from; drop --resume to start fresh")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise TokenizationError(
            f"cannot read checkpoint {str(path)!r} ({type(e).__name__}); delete it or restore a good copy"
        ) from e


def train_vqvae(
    config: VQVAEConfig, options: TrainOptions, sources: Sequence[ImageSource], log: Callable[[str], None] = print
) -> TrainResult:
    """Train (or resume) a VQ-VAE on `sources` and export model.safetensors + config.json into options.out.

    `sources` are the images options.data names, listed by data_utils.image_sources.find_images."""
    _validate(options)
    if not sources:
        raise TokenizationError("no training images given; check --data")
    world = _join_world(options.device)
    try:
        return _train(config, options, list(sources), world, log if world.rank == 0 else (lambda _: None))
    finally:
        if world.created:
            dist.destroy_process_group()


def _train(
    config: VQVAEConfig, options: TrainOptions, sources: list[ImageSource], world: _World, log: Callable[[str], None]
) -> TrainResult:
    """train_vqvae in one process of `world` (rank 0 logs and saves)."""
    device = _device(options.device, world)
    global_batch = options.batch_size * world.size
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT_NAME
    checkpoint = load_checkpoint(checkpoint_path) if options.resume else None
    if checkpoint is not None:
        saved = VQVAEConfig.from_dict(checkpoint["config"])
        if saved != config:
            raise TokenizationError(
                f"the checkpoint in {str(out)!r} was trained with a different model config; "
                "drop the model flags when resuming or use a new --out"
            )
        if checkpoint["batch_size"] != global_batch or checkpoint["seed"] != options.seed:
            log("warning: the global batch (--batch-size x processes) or --seed differs from the checkpoint; "
                "the data order will not match the first run")
    elif checkpoint_path.exists():
        raise TokenizationError(
            f"{str(out)!r} already holds a training checkpoint; pass --resume to continue it or pick a new --out"
        )

    dataset = ImageFolderDataset(sources, config.image_size, config.normalize_mean, config.normalize_std,
                                 cache=options.cache_images, random_crop=options.random_crop, seed=options.seed)
    torch.manual_seed(options.seed)  # the same on every rank: same initial weights and codebook draws
    model = VQVAE(config).to(device)
    model.quantizer.distributed = world.size > 1
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
        betas=(0.9, 0.99),
    )
    start = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng_cpu"])
        if checkpoint["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
        start = int(checkpoint["step"])
        log(f"resumed from {checkpoint_path} at step {start}")
    if start >= options.steps:
        log(f"checkpoint is already at step {start} >= --steps {options.steps}; nothing to do")
        if world.rank == 0:
            save_pretrained(model, out)
        return TrainResult(start, {}, out, model)

    # gradients are averaged over ranks; the codebook is kept equal by the quantiser itself (no buffer broadcast)
    step_model = model if world.size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    sampler = ResumableBatchSampler(len(dataset), global_batch, options.seed, start_step=start, rank=world.rank,
                                    world=world.size, tag_epochs=options.random_crop)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=options.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if options.workers > 0 else None,
        generator=torch.Generator().manual_seed(options.seed),  # keeps the global RNG untouched
    )
    log(
        f"training VQ-VAE on {len(dataset)} images, {device}"
        + (f" x {world.size} processes (global batch {global_batch})" if world.size > 1 else "")
        + f", {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"grid {config.grid_size}x{config.grid_size}, codebook {config.codebook_size}x{config.code_dim}"
    )
    show_bar = sys.stderr.isatty() if options.progress is None else options.progress
    from tqdm import tqdm  # light, but only needed here

    bar = tqdm(total=options.steps, initial=start, disable=not show_bar or world.rank != 0, unit="step",
               dynamic_ncols=True)
    mean = torch.tensor(config.normalize_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.normalize_std, device=device).view(1, -1, 1, 1)
    meter = UsageMeter(config.codebook_size)
    metrics: dict[str, float] = {}
    log_file = (out / LOG_NAME).open("a", encoding="utf-8") if world.rank == 0 else None
    model.train()
    step = start
    began = time.perf_counter()
    try:
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = options.lr * _lr_scale(step, options.warmup_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.amp and device.type == "cuda"):
                result = step_model(batch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            step += 1
            with torch.no_grad():
                recon01 = (result.reconstruction.float() * std + mean).clamp(0, 1)
                mse01 = (recon01 - (batch * std + mean)).pow(2).mean()
            meter.add(result.counts, result.reconstruction_loss.detach(), result.commitment_loss.detach(), mse01)
            bar.update(1)
            if step % options.log_every == 0 or step == options.steps:
                if world.size > 1:  # the window's figures over every rank's images
                    meter.all_reduce()
                metrics = meter.summary()
                elapsed = time.perf_counter() - began
                log(
                    f"step {step}/{options.steps} rec_loss {metrics['rec_loss']:.5f} psnr {metrics['psnr']:.2f} dB "
                    f"commit {metrics['commit_loss']:.5f} perplexity {metrics['perplexity']:.1f} "
                    f"codes_used {metrics['codes_used']:.3f} ({elapsed:.0f}s)"
                )
                if log_file is not None:
                    log_file.write(json.dumps({"step": step, **metrics}) + "\n")
                    log_file.flush()
                bar.set_postfix(psnr=f"{metrics['psnr']:.1f}", used=f"{metrics['codes_used']:.2f}")
                meter = UsageMeter(config.codebook_size)
            if world.rank == 0 and (step % options.save_every == 0 or step == options.steps):
                _save_checkpoint(checkpoint_path, model, optimizer, step, options, global_batch)
                save_pretrained(model, out)
            if step >= options.steps:
                break
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    log(f"saved {out / 'model.safetensors'} and {out / 'config.json'} (step {step})")
    return TrainResult(step, metrics, out, model)
