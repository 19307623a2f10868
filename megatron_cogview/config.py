"""Typed configuration dataclasses; each validates itself and names the bad field and the fix."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

LayerNormOrder = Literal["sandwich", "pre", "post"]
AttentionKernel = Literal["sdpa", "pb-relax", "plain"]
PBRelaxLayerNorm = Literal["none", "final", "all"]


class ConfigError(ValueError):
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

    num_layers: int = 4
    """Number of transformer layers."""
    hidden_size: int = 128
    """Width of the residual stream."""
    num_attention_heads: int = 4
    """Attention heads; must divide hidden_size (and be divisible by the tensor-parallel size)."""
    vocab_size: int = 58240
    """Padded vocabulary size (image codes + text pieces + command tokens, padded); divisible by tp."""
    max_position_embeddings: int = 1089
    """Rows of the learned position-embedding table (longest sequence the model accepts)."""
    ffn_hidden_size: int = 0
    """MLP inner width; 0 means 4 * hidden_size."""
    hidden_dropout: float = 0.1
    """Dropout on each residual branch output and on the embeddings."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layernorm_epsilon: float = 1e-5
    """LayerNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal init; the two output projections per layer use init_std / sqrt(2 * num_layers)."""
    layernorm_order: LayerNormOrder = "sandwich"
    """LayerNorm placement: sandwich (CogView, 4 LNs per layer), pre (GPT-2) or post (original Transformer)."""
    attention_kernel: AttentionKernel = "sdpa"
    """Attention kernel: sdpa (torch fused), pb-relax (CogView's overflow-safe softmax) or plain."""
    pb_relax_alpha: float = 32.0
    """alpha of PB-relax attention: scores are formed at 1/alpha scale."""
    pb_relax_layernorm: PBRelaxLayerNorm = "none"
    """Divide LayerNorm inputs by their detached max: none, final (final LN only) or all."""
    pb_relax_ln_target: float = 8.0
    """PB-relax LayerNorm rescales each input row to this max |x| (the released CogView used 8)."""
    checkpoint_activations: bool = False
    """Recompute each layer's activations in backward to save memory."""
    seed: int = 1234
    """Seed of weight initialisation and dropout streams."""

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

    tensor_parallel_size: int = 1
    """Ranks that share one copy of the model (Megatron model parallelism); contiguous ranks."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on CUDA, gloo otherwise), nccl or gloo."""

    def __post_init__(self) -> None:
        _require(
            isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1,
            f"tensor_parallel_size={self.tensor_parallel_size!r} must be an integer >= 1",
        )
        _require(self.backend in ("auto", "nccl", "gloo"), f"backend={self.backend!r} is not one of auto, nccl, gloo")

    def data_parallel_size(self, world_size: int) -> int:
        """world_size / tp, or a ConfigError naming both numbers."""
        _require(
            world_size % self.tensor_parallel_size == 0,
            f"world size {world_size} is not divisible by tensor_parallel_size={self.tensor_parallel_size}; "
            f"launch a multiple of {self.tensor_parallel_size} processes or change the tp size",
        )
        return world_size // self.tensor_parallel_size


__all__ = [
    "ConfigError",
    "ModelConfig",
    "ParallelConfig",
    "PRESETS",
    "model_preset",
    "pad_vocab_size",
]
