"""VQVAEConfig: the architecture and quantiser hyper-parameters, saved as config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from megatron_cogview.dataclass_flags import option
from tokenization.errors import TokenizationError

ARCHITECTURES = ("residual", "cogview-original")
"""residual: strided convs + 3x3 conv + residual blocks (ours); cogview-original: the released CogView VQ-VAE
(strided 4x4 convs straight into a 1x1 projection, no residual blocks; the decoder mirrors it with transposed
convs and ends in a 1x1 conv)."""


@dataclass(frozen=True)
class VQVAEConfig:
    """Hyper-parameters of a VQ-VAE image tokenizer (defaults: CogView's 256 px -> 32x32 codes of 8192)."""

    image_size: int = option(256, "training resolution")
    in_channels: int = option(3, "image channels", cli=False)
    hidden_channels: int = option(256, "conv width")
    num_res_blocks: int = option(2, "residual blocks at the code resolution")
    res_channels: int = option(128, "residual-block bottleneck width")
    downsample: int = option(8, "pixels per code side, a power of two")
    codebook_size: int = option(8192, "number of codes")
    code_dim: int = option(256, "code vector size")
    ema_decay: float = option(0.99, "codebook EMA decay")
    ema_eps: float = option(1e-5, "epsilon of the codebook EMA", cli=False)
    commitment_beta: float = option(0.25, "commitment loss weight")
    dead_code_threshold: float = option(0.03, "re-initialise codes used less than this x the uniform share (0: never)")
    normalize_mean: tuple[float, ...] = option((0.5, 0.5, 0.5), "per-channel mean of the input normalisation", cli=False)
    normalize_std: tuple[float, ...] = option((0.5, 0.5, 0.5), "per-channel std of the input normalisation", cli=False)
    architecture: str = option(
        "residual", "residual or cogview-original (the released CogView VQ-VAE's layers; no residual blocks)",
        choices=ARCHITECTURES,
    )

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "in_channels",
            "hidden_channels",
            "res_channels",
            "downsample",
            "codebook_size",
            "code_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenizationError(f"VQVAEConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
            raise TokenizationError(f"VQVAEConfig.num_res_blocks must be >= 0, got {self.num_res_blocks!r}")
        if self.downsample < 2 or self.downsample & (self.downsample - 1):
            raise TokenizationError(f"downsample must be a power of two >= 2 (e.g. 8), got {self.downsample}")
        if self.image_size % self.downsample:
            raise TokenizationError(
                f"image_size {self.image_size} is not a multiple of downsample {self.downsample}; pick e.g. "
                f"{self.image_size // self.downsample * self.downsample or self.downsample}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise TokenizationError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.commitment_beta < 0 or self.dead_code_threshold < 0 or self.ema_eps <= 0:
            raise TokenizationError("commitment_beta and dead_code_threshold must be >= 0 and ema_eps > 0")
        for name in ("normalize_mean", "normalize_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != self.in_channels:
                raise TokenizationError(f"{name} needs {self.in_channels} values (one per channel), got {len(value)}")
            object.__setattr__(self, name, value)
        if min(self.normalize_std) <= 0:
            raise TokenizationError(f"normalize_std must be positive, got {self.normalize_std}")
        if self.architecture not in ARCHITECTURES:
            raise TokenizationError(f"architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.architecture == "cogview-original" and self.num_res_blocks:
            raise TokenizationError("the cogview-original VQ-VAE architecture has no residual blocks; set num_res_blocks=0")

    @property
    def grid_size(self) -> int:
        """Side of the code grid (image_size / downsample)."""
        return self.image_size // self.downsample

    @property
    def num_downsamples(self) -> int:
        """Number of stride-2 stages (log2 of downsample)."""
        return self.downsample.bit_length() - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists); the default architecture is left out, so configs (and the
        tokenizer fingerprints hashed from them) written before the field existed stay the same."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if data["architecture"] == "residual":
            del data["architecture"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VQVAEConfig":
        """Inverse of to_dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TokenizationError(
                f"unknown VQ-VAE config keys {unknown}; was this config written by a newer version?"
            )
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write as pretty JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "VQVAEConfig":
        """Read a config.json written by save()."""
        path = Path(path)
        if not path.is_file():
            raise TokenizationError(
                f"VQ-VAE config {str(path)!r} not found; point to a directory made by `cogview tokenizer train-vqvae`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizationError(f"{str(path)!r} is not valid JSON ({e.msg}); re-export the tokenizer") from e
        return cls.from_dict(data)


@dataclass
class TrainOptions:
    """How to train a VQ-VAE (the model itself is described by VQVAEConfig); the flags of `cogview tokenizer train-vqvae`."""

    data: list[str] = option(help="folders of images, image-list .txt files, or .tar shards (shard-{000..009}.tar)")
    out: Path = option(help="output directory: model.safetensors, config.json, checkpoint.pt, train_log.jsonl")
    steps: int = option(100_000, "total optimisation steps (a resumed run continues up to this)")
    batch_size: int = option(32, "images per step per process (under torchrun: global batch = this x WORLD_SIZE)")
    lr: float = option(3e-4, "AdamW learning rate")
    warmup_steps: int = option(500, "linear learning-rate warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "max gradient norm (0: off)")
    workers: int = option(4, "DataLoader worker processes")
    cache_images: bool = option(False, "keep every image's decoded pixels in memory after its first read (uint8: "
                                "3 x size^2 bytes per image and loader process; for small images read every epoch)")
    random_crop: bool = option(False, "train on random image-size windows of each image at its own pixels instead "
                               "of resized whole images (images smaller than the image size are resized up first); "
                               "mix in images at 2x to teach the scale super-resolution decodes")
    save_every: int = option(2000, "checkpoint + export every N steps")
    log_every: int = option(100, "log metrics averaged over N steps")
    seed: int = option(0, "seed of initialisation and data order")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (under torchrun cuda = cuda:LOCAL_RANK)")
    amp: bool = option(False, "bf16 autocast on CUDA (quantiser stays fp32)")
    resume: bool = option(False, "continue from OUT/checkpoint.pt")
    progress: bool | None = option(None, "show a progress bar (None: only when stderr is a TTY)", cli=False)
