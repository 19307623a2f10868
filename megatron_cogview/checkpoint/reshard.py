"""How each CogView parameter is split over tensor-parallel ranks, and re-slicing shards for a new tp size.

Rules are name based (the checkpoint keys, see docs/ARCHITECTURE.md) and cross-checked against the
`partition_dim` / `partition_stride` attributes the parallel layers put on a model built on the meta
device, so a layer that changes how it shards cannot silently disagree with conversion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megatron_cogview.config import ConfigError, ModelConfig, pad_vocab_size
from megatron_cogview.parallel.state import ParallelState


@dataclass(frozen=True)
class SplitRule:
    """How one parameter is split: kind is 'replicated', 'column', 'row' or 'vocab'."""

    kind: str
    dim: int = 0
    stride: int = 1

    @property
    def sharded(self) -> bool:
        """True when each tp rank holds a slice."""
        return self.kind != "replicated"


REPLICATED = SplitRule("replicated")


def split_rule(name: str) -> SplitRule:
    """The split rule of a state-dict key of CogViewModel (original CogView names)."""
    if name == "word_embeddings.weight":
        return SplitRule("vocab", 0)
    if name.endswith((".attention.query_key_value.weight", ".attention.query_key_value.bias")):
        return SplitRule("column", 0, 3)  # fused QKV: shard r is [Q_r; K_r; V_r]
    if name.endswith((".mlp.dense_h_to_4h.weight", ".mlp.dense_h_to_4h.bias")):
        return SplitRule("column", 0)
    if name.endswith((".attention.dense.weight", ".mlp.dense_4h_to_h.weight")):
        return SplitRule("row", 1)
    return REPLICATED


def meta_state(tp_size: int) -> ParallelState:
    """A rank-0 description of a tp group, enough to build a model on the meta device."""
    if tp_size == 1:
        return ParallelState.single()
    return ParallelState(tp_size=tp_size, tp_rank=0, dp_size=1, dp_rank=0, rank=0, world_size=tp_size,
                         tp_ranks=tuple(range(tp_size)))


def expected_shapes(config: ModelConfig, tp_size: int) -> dict[str, tuple[tuple[int, ...], SplitRule]]:
    """Key -> (local shape at tp_size, rule) of the model `config` describes; checks rules against the layers."""
    from megatron_cogview.model import CogViewModel  # the model is only needed for this check

    model = CogViewModel(config, meta_state(tp_size), device="meta")
    params = dict(model.named_parameters())
    out: dict[str, tuple[tuple[int, ...], SplitRule]] = {}
    for name, tensor in model.state_dict().items():
        rule = split_rule(name)
        p = params.get(name)
        if p is not None and tp_size > 1:
            layer_dim = getattr(p, "partition_dim", None) if getattr(p, "tensor_model_parallel", False) else None
            layer_stride = getattr(p, "partition_stride", 1)
            if layer_dim != (rule.dim if rule.sharded else None) or (rule.sharded and layer_stride != rule.stride):
                raise RuntimeError(
                    f"conversion rule for {name} ({rule}) disagrees with the layer (partition_dim={layer_dim}, "
                    f"stride={layer_stride}); please report this"
                )
        out[name] = (tuple(tensor.shape), rule)
    return out


def valid_tp_sizes(config: ModelConfig) -> list[int]:
    """Tensor-parallel sizes that divide the heads and the MLP width."""
    return [t for t in range(1, config.num_attention_heads + 1)
            if config.num_attention_heads % t == 0 and config.ffn_size % t == 0]


def target_vocab_size(padded: int, tp_size: int, num_tokens: int | None) -> int:
    """Padded vocabulary rows at tp_size (the rule is in the comment below)."""
    # Known real token count: Megatron padding for the new tp, pad_vocab_size(num_tokens, tp).
    # Unknown: keep `padded` when tp divides it, else grow to pad_vocab_size(padded, tp); never shrink,
    # since without the real count we cannot tell padding rows from token rows.
    if num_tokens is not None:
        if num_tokens > padded:
            raise ConfigError(f"the checkpoint has {padded} embedding rows but its metadata names {num_tokens} tokens")
        return pad_vocab_size(num_tokens, tp_size)
    return padded if padded % tp_size == 0 else pad_vocab_size(padded, tp_size)


def check_target_tp(config: ModelConfig, tp_size: int) -> None:
    """ConfigError naming heads/MLP width and tp when tp_size cannot shard this model."""
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ConfigError(f"--target-tp {tp_size!r} must be an integer >= 1")
    valid = valid_tp_sizes(config)
    if tp_size not in valid:
        raise ConfigError(
            f"--target-tp {tp_size} does not divide num_attention_heads={config.num_attention_heads} "
            f"(and ffn_size={config.ffn_size}); choose one of {', '.join(map(str, valid))}"
        )


def reslice(
    shards: Sequence[torch.Tensor], rule: SplitRule, out_tp: int, out_rank: int, new_size: int | None = None
) -> torch.Tensor:
    """Output rank `out_rank`'s slice (at out_tp) of the master the input `shards` form, as a fresh tensor."""
    # Only the needed pieces are read, so untouched pages of memory-mapped inputs stay on disk. `new_size`
    # re-pads the master along rule.dim (stride 1 only): rows past the old size are zero-filled, rows past
    # the new size dropped. Each stride block (Q, K, V for the fused QKV) is re-cut separately.
    if not rule.sharded:
        return shards[0].clone()
    dim, stride = rule.dim, rule.stride
    local_in = shards[0].size(dim) // stride  # rows of one stride block held by one input rank
    old_block = local_in * len(shards)
    new_block = (new_size if new_size is not None else old_block * stride) // stride
    if new_block != old_block and stride != 1:
        raise ValueError("re-padding is only defined for stride-1 parameters")
    if new_block % out_tp:
        raise ValueError(f"dimension of size {new_block} does not split into {out_tp} shards")
    local_out = new_block // out_tp
    parts: list[torch.Tensor] = []
    for block in range(stride):
        pos, hi = out_rank * local_out, (out_rank + 1) * local_out
        while pos < hi:
            if pos >= old_block:  # new padding rows
                shape = list(shards[0].shape)
                shape[dim] = hi - pos
                parts.append(torch.zeros(shape, dtype=shards[0].dtype))
                break
            r, off = divmod(pos, local_in)
            take = min(local_in - off, hi - pos)
            parts.append(shards[r].narrow(dim, block * local_in + off, take))
            pos += take
    return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0].clone(memory_format=torch.contiguous_format)
