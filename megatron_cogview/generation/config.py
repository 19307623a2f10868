"""GenerationConfig: sampling and batching settings of every generation task, validated on creation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from megatron_cogview.config import ConfigError
from megatron_cogview.dataclass_flags import option


class GenerationError(ConfigError):
    """A generation request the model cannot serve (bad setting, prompt too long, ids outside the vocab)."""


def require(ok: bool, message: str) -> None:
    """Raise GenerationError(message) unless ok."""
    if not ok:
        raise GenerationError(message)


@dataclass(frozen=True)
class GenerationConfig:
    """How tokens are drawn and batched (shared by text-to-image, captioning and post-selection)."""

    temperature: float = option(
        1.0,
        "Divide logits by this before sampling; 0 means greedy (always the most likely token).",
    )
    top_k: int = option(0, "Keep only the k most likely tokens of each row (0 = off; CogView's scripts used 200).")
    top_p: float = option(
        1.0,
        "Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches p (1 = off).",
    )
    seed: int = option(
        1234,
        "Base seed; each sample draws from its own generator, so a sample does not depend on its batch.",
    )
    max_inference_batch_size: int = option(
        16, "Most sequences per forward pass; bigger batches are split into chunks of this size.", flag="--max-batch"
    )
    static_shapes: bool = option(
        False,
        "Shape-static decode steps (attend over the whole preallocated cache under a device-side mask): the same "
        "tokens, a little more attention work per step; what CUDA graphs and torch.compile need.",
        cli=False,  # the library's choice (cuda_graphs and compile_step imply it); no flag
    )
    cuda_graphs: bool = option(
        False,
        "Capture the decode step as a CUDA graph once per batch chunk and replay it (CUDA only; static shapes).",
    )
    compile_step: bool = option(
        False, "torch.compile the decode step (static shapes; the first chunk pays the compile time).", flag="--compile"
    )

    def __post_init__(self) -> None:
        require(self.temperature >= 0.0, f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        require(
            isinstance(self.top_k, int) and self.top_k >= 0,
            f"top_k={self.top_k!r} must be an integer >= 0 (0 turns top-k off)",
        )
        require(0.0 < self.top_p <= 1.0, f"top_p={self.top_p} must be in (0, 1] (1 turns top-p off)")
        require(isinstance(self.seed, int) and self.seed >= 0, f"seed={self.seed!r} must be an integer >= 0")
        require(
            isinstance(self.max_inference_batch_size, int) and self.max_inference_batch_size >= 1,
            f"max_inference_batch_size={self.max_inference_batch_size!r} must be an integer >= 1",
        )

    @property
    def static(self) -> bool:
        """True when decode steps must keep fixed shapes."""
        return self.static_shapes or self.cuda_graphs or self.compile_step

    @property
    def greedy(self) -> bool:
        """True when tokens are chosen by argmax instead of sampled."""
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for JSONL records)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
