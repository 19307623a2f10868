"""Typed configuration dataclasses; each validates itself and names the bad field and the fix."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from megatron_cogview.dataclass_flags import field_help, option
from megatron_cogview.errors import UserError

LayerNormOrder = Literal["sandwich", "pre", "post"]
AttentionKernel = Literal["sdpa", "pb-relax", "plain", "sparse"]
SparseBackend = Literal["auto", "flex", "sdpa"]
PBRelaxLayerNorm = Literal["none", "final", "all"]


class ConfigError(UserError):
    """A configuration value a user set is invalid; the message names the field and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(name: str, value: str, literal: Any) -> None:
    choices = get_args(literal)
    _require(value in choices, f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def pad_vocab_size(num_tokens: int, tp_size: int, divisible_by: int = 128) -> int:
    """Smallest multiple of divisible_by * tp_size that holds num_tokens (Megatron padding)."""
    multiple = divisible_by * tp_size
    return ((num_tokens + multiple - 1) // multiple) * multiple


@dataclass
class ModelConfig:
    """Shape and numerics of a CogView transformer."""

    num_layers: int = option(4, "Number of transformer layers.")
    hidden_size: int = option(128, "Width of the residual stream.")
    num_attention_heads: int = option(
        4,
        "Attention heads; must divide hidden_size (and be divisible by the tensor-parallel size).",
    )
    vocab_size: int = option(
        58240,
        "Padded vocabulary size (image codes + text pieces + command tokens, padded); divisible by tp.",
    )
    max_position_embeddings: int = option(
        1089,
        "Rows of the learned position-embedding table (longest sequence the model accepts).",
    )
    ffn_hidden_size: int = option(0, "MLP inner width; 0 means 4 * hidden_size.")
    hidden_dropout: float = option(0.1, "Dropout on each residual branch output and on the embeddings.")
    attention_dropout: float = option(0.1, "Dropout on attention probabilities.")
    layernorm_epsilon: float = option(1e-5, "LayerNorm epsilon.")
    init_std: float = option(
        0.02,
        "Std of the normal init; the two output projections per layer use init_std / sqrt(2 * num_layers).",
    )
    layernorm_order: LayerNormOrder = option(
        "sandwich",
        "LayerNorm placement: sandwich (CogView, 4 LNs per layer), pre (GPT-2) or post (original Transformer).",
    )
    attention_kernel: AttentionKernel = option(
        "sdpa",
        "Attention kernel: sdpa (torch fused), pb-relax (CogView's overflow-safe softmax), plain, or sparse "
        "(CogView's three-region sparse attention in training; dense causal attention in eval and generation).",
    )
    sparse_num_pivot: int = option(
        768,
        "Sparse attention: pivots every query may see, all text tokens plus sampled image tokens to this total.",
    )
    sparse_window: int = option(
        768,
        "Sparse attention: the causal local window, in tokens (the query itself included).",
    )
    sparse_image_tokens: int = option(
        8192,
        "Sparse attention: ids below this are image codes (sampled as pivots); every other id is always a pivot.",
    )
    sparse_backend: SparseBackend = option(
        "auto",
        "Sparse attention: flex (torch FlexAttention, compiled, no [s, s] mask; CUDA only for training), sdpa "
        "(SDPA with a dense [s, s] bias) or auto (flex on CUDA when attention dropout is 0, else sdpa).",
    )
    pb_relax_alpha: float = option(32.0, "alpha of PB-relax attention: scores are formed at 1/alpha scale.")
    pb_relax_layernorm: PBRelaxLayerNorm = option(
        "none",
        "Divide LayerNorm inputs by their detached max: none, final (final LN only) or all.",
    )
    pb_relax_ln_target: float = option(
        8.0,
        "PB-relax LayerNorm rescales each input row to this max |x| (the released CogView used 8).",
    )
    checkpoint_activations: bool = option(False, "Recompute each layer's activations in backward to save memory.")
    compile_layers: bool = option(
        False,
        "torch.compile each transformer layer for training (fuses LayerNorm, GELU, dropout and residual adds; the"
        " first step pays the compile). Hidden-dropout masks are drawn eagerly from the same stream, so results "
        "match eager; evaluation, generation and activation checkpointing run the eager layers.",
    )
    seed: int = option(1234, "Seed of weight initialisation and dropout streams.")

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
            f"{self.num_attention_heads}; choose heads that divide the hidden size",
        )
        _require(self.ffn_hidden_size >= 0, f"ffn_hidden_size={self.ffn_hidden_size} must be >= 0 (0 means 4*hidden)")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"{name}={value} must be in [0, 1)")
        _require(self.layernorm_epsilon > 0, f"layernorm_epsilon={self.layernorm_epsilon} must be > 0")
        _require(self.init_std > 0, f"init_std={self.init_std} must be > 0")
        _require(self.pb_relax_alpha > 0, f"pb_relax_alpha={self.pb_relax_alpha} must be > 0")
        _require(self.pb_relax_ln_target > 0, f"pb_relax_ln_target={self.pb_relax_ln_target} must be > 0")
        _check_choice("layernorm_order", self.layernorm_order, LayerNormOrder)
        _check_choice("attention_kernel", self.attention_kernel, AttentionKernel)
        _check_choice("sparse_backend", self.sparse_backend, SparseBackend)
        for name in ("sparse_num_pivot", "sparse_window", "sparse_image_tokens"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        _require(
            not (self.attention_kernel == "sparse" and self.sparse_backend == "flex" and self.attention_dropout > 0),
            f"attention_dropout={self.attention_dropout}: FlexAttention has no attention dropout; set "
            "--attention-dropout 0 or --sparse-backend sdpa",
        )
        _require(
            self.attention_kernel != "sparse" or self.sparse_window < self.max_position_embeddings,
            f"sparse_window={self.sparse_window} covers the whole sequence (max_position_embeddings="
            f"{self.max_position_embeddings}): sparse attention would be dense; use --attention-kernel sdpa",
        )
        _check_choice("pb_relax_layernorm", self.pb_relax_layernorm, PBRelaxLayerNorm)

    @property
    def ffn_size(self) -> int:
        """Effective MLP inner width."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def check_tensor_parallel(self, tp_size: int) -> None:
        """Raise ConfigError unless every sharded dimension divides by tp_size."""
        for name, value in (
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("ffn_size", self.ffn_size),
        ):
            _require(
                value % tp_size == 0,
                f"{name}={value} is not divisible by tensor-parallel size {tp_size}; "
                f"use a tp size that divides it" + (" (or re-pad the vocabulary for this tp)" if name == "vocab_size" else ""),
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for JSON and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        """Load from a JSON file (a bare ModelConfig dict or one under the key 'model')."""
        p = Path(path)
        _require(p.is_file(), f"config file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid JSON: {e}") from None
        return cls.from_dict(data.get("model", data))


PRESETS: dict[str, dict[str, Any]] = {
    # The published model (Ding et al. 2021): exactly 3,928,849,920 parameters.
    "cogview-4b": dict(
        num_layers=48, hidden_size=2560, num_attention_heads=40, vocab_size=58240, max_position_embeddings=1089
    ),
    # Tiny shapes for tests and the laptop demo.
    "tiny": dict(
        num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=1024, max_position_embeddings=128,
        hidden_dropout=0.0, attention_dropout=0.0,
    ),
    "demo": dict(
        num_layers=4, hidden_size=128, num_attention_heads=4, vocab_size=512, max_position_embeddings=80,
        hidden_dropout=0.0, attention_dropout=0.0,
    ),
    # The shape of bench/model_step.py (vocab of the real layout).
    "small": dict(
        num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=58240, max_position_embeddings=1089
    ),
    "base": dict(
        num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=58240, max_position_embeddings=1089
    ),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, with field overrides."""
    _require(name in PRESETS, f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})


@dataclass
class ParallelConfig:
    """How the world is split: tensor-parallel size (data-parallel size is world / tp)."""

    tensor_parallel_size: int = option(
        1,
        "Ranks that share one copy of the model (Megatron model parallelism); contiguous ranks.",
    )
    backend: str = option("auto", "torch.distributed backend: auto (nccl on CUDA, gloo otherwise), nccl or gloo.")
    distributed_timeout_minutes: float = option(
        10.0,
        "How long a rank waits in a collective for its peers (a hung or lost peer) before it stops with an error.",
    )

    def __post_init__(self) -> None:
        _require(
            isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1,
            f"tensor_parallel_size={self.tensor_parallel_size!r} must be an integer >= 1",
        )
        _require(self.backend in ("auto", "nccl", "gloo"), f"backend={self.backend!r} is not one of auto, nccl, gloo")
        _require(self.distributed_timeout_minutes > 0,
                 f"distributed_timeout_minutes={self.distributed_timeout_minutes} must be > 0")


Precision = Literal["fp32", "bf16", "fp16"]
DecayStyle = Literal["cosine", "linear", "constant"]


@dataclass
class TrainConfig:
    """Optimisation, precision, checkpointing and logging of a pre-training run."""

    train_iters: int = option(1000, "Optimizer steps to run in total (a resumed run continues up to this number).")
    micro_batch_size: int = option(8, "Sequences per data-parallel rank per micro-batch.")
    gradient_accumulation_steps: int = option(
        1,
        "Micro-batches accumulated per optimizer step (global batch = micro x accumulation x dp).",
    )
    global_batch_size: int = option(
        0,
        "Sequences per optimizer step over all ranks; sets the accumulation steps (0: micro x accumulation x dp).",
    )
    lr: float = option(3e-4, "Peak learning rate (CogView: 3e-4).")
    min_lr_ratio: float = option(0.1, "Learning-rate floor as a fraction of the peak (CogView: 0.1).")
    warmup: float = option(
        0.02,
        "Warm-up length: a fraction of train_iters if < 1, else a number of steps (CogView: 2%).",
    )
    lr_decay_style: DecayStyle = option("cosine", "Decay after warm-up: cosine, linear or constant.")
    weight_decay: float = option(0.04, "AdamW weight decay (not applied to LayerNorms and biases).")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.95, "AdamW beta2 (CogView: 0.95).")
    adam_eps: float = option(1e-8, "AdamW epsilon.")
    clip_grad: float = option(1.0, "Global gradient-norm clipping threshold (0 disables).")
    precision: Precision = option("fp32", "fp32, bf16, or fp16 (dynamic loss scaling; GPU only).")
    zero_stage: int = option(0, "DeepSpeed ZeRO stage 0-3 (3 only with tensor-parallel size 1).")
    txt_loss_scale: float = option(
        1.0,
        "Weight of text-token losses relative to image-token losses (by the label's type).",
    )
    seed: int = option(1234, "Seed of data order, weight init and dropout.")
    log_interval: int = option(10, "Print one log line every this many steps.")
    eval_interval: int = option(0, "Run validation every this many steps (0: never).")
    eval_iters: int = option(10, "Validation batches per evaluation.")
    save: str = option("", "Directory for checkpoints and metrics.jsonl ('' disables saving).")
    save_interval: int = option(
        0,
        "Save a checkpoint every this many steps (0: only at the end and on SIGTERM/SIGINT).",
    )
    keep_last: int = option(2, "Checkpoints to keep (older ones are deleted after a newer one is complete).")
    load: str = option("", "Resume from the latest checkpoint in this directory ('' starts fresh).")
    finetune_from: str = option(
        "",
        "Start from this checkpoint's weights only (new optimizer, iteration 0); ignored when --load resumes.",
    )
    exit_interval: int = option(
        0,
        "Save and exit 0 once the iteration is a multiple of this (0: run to train_iters); for job time limits.",
    )
    max_consecutive_skips: int = option(
        10,
        "Stop (exit 2) after more than this many consecutive skipped steps of any cause (0: never).",
    )
    tensorboard_dir: str = option("", "Also write scalars to TensorBoard here (needs the [tensorboard] extra).")
    wandb_project: str = option(
        "",
        "Also log the metrics.jsonl fields to this Weights & Biases project (needs the [wandb] extra; "
        "WANDB_MODE=offline logs without network, `wandb sync` uploads later); a resumed run continues the same "
        "W&B run.",
    )
    wandb_run_name: str = option("", "W&B run name ('' lets W&B choose).")
    peak_tflops: float = option(
        0.0,
        "Peak TFLOP/s per GPU for the logged MFU (0: from the GPU's name; unknown GPUs log no MFU).",
    )

    def __post_init__(self) -> None:
        for name in ("train_iters", "micro_batch_size", "gradient_accumulation_steps", "log_interval", "keep_last"):
            _require(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        for name in ("eval_interval", "save_interval", "eval_iters", "max_consecutive_skips", "global_batch_size",
                     "exit_interval"):
            _require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        _require(self.lr > 0, f"lr={self.lr} must be > 0")
        _require(self.peak_tflops >= 0, f"peak_tflops={self.peak_tflops} must be >= 0 (0: from the GPU name)")
        _require(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        _require(self.warmup >= 0, f"warmup={self.warmup} must be >= 0")
        _require(self.clip_grad >= 0, f"clip_grad={self.clip_grad} must be >= 0 (0 disables clipping)")
        _require(self.zero_stage in (0, 1, 2, 3), f"zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        _require(self.txt_loss_scale >= 0, f"txt_loss_scale={self.txt_loss_scale} must be >= 0")
        _check_choice("precision", self.precision, Precision)
        _check_choice("lr_decay_style", self.lr_decay_style, DecayStyle)

    def resolve_batch(self, dp_size: int) -> "TrainConfig":
        """This config with gradient_accumulation_steps set from global_batch_size for `dp_size` ranks."""
        per_step = self.micro_batch_size * dp_size
        if not self.global_batch_size:
            return self
        _require(
            self.global_batch_size % per_step == 0,
            f"global_batch_size={self.global_batch_size} is not divisible by micro_batch_size x data-parallel size "
            f"= {self.micro_batch_size} x {dp_size}; choose a multiple of {per_step}",
        )
        return dataclasses.replace(self, gradient_accumulation_steps=self.global_batch_size // per_step)

    @property
    def warmup_steps(self) -> int:
        """Warm-up length in optimizer steps."""
        return int(round(self.warmup * self.train_iters)) if self.warmup < 1 else int(self.warmup)


@dataclass
class DataConfig:
    """Where training data comes from (folders made by `cogview preprocess`)."""

    train_data: str = option(
        "",
        "Comma-separated dataset folders (each with dataset.json); several are mixed by data_weights.",
    )
    data_weights: str = option("", "Comma-separated mixing weights, one per dataset (default: equal).")
    valid_data: str = option(
        "",
        "Comma-separated validation dataset folders (default: the last val_shards shards of train_data).",
    )
    val_shards: int = option(0, "Hold out this many shards of each training dataset for validation (never trained on).")
    num_workers: int = option(0, "DataLoader worker processes per data-parallel rank.")
    shuffle_buffer: int = option(1000, "Samples in the shuffle buffer.")
    text_tokenizer: str = option(
        "",
        "SentencePiece model the data was made with (checked against the shards; recorded for generation).",
    )
    image_tokenizer: str = option(
        "",
        "VQ-VAE directory the data was made with (checked against the shards; recorded for generation).",
    )

    def __post_init__(self) -> None:
        _require(self.val_shards >= 0, f"val_shards={self.val_shards} must be >= 0")
        _require(self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0")

    def paths(self, which: str = "train") -> list[str]:
        """The dataset folders of `train` or `valid`."""
        text = self.train_data if which == "train" else self.valid_data
        return [p for p in (x.strip() for x in text.split(",")) if p]

    def weights(self) -> list[float] | None:
        """Mixing weights (None: equal)."""
        if not self.data_weights:
            return None
        try:
            return [float(x) for x in self.data_weights.split(",")]
        except ValueError:
            raise ConfigError(f"data_weights={self.data_weights!r} must be comma-separated numbers") from None


def field_docs(cls: type) -> dict[str, str]:
    """The help text of each dataclass field (its metadata; see megatron_cogview.dataclass_flags)."""
    return {f.name: field_help(f) for f in dataclasses.fields(cls)}


__all__ = [
    "ConfigError",
    "ModelConfig",
    "ParallelConfig",
    "TrainConfig",
    "DataConfig",
    "field_docs",
    "PRESETS",
    "model_preset",
    "pad_vocab_size",
]
