"""How each CogView parameter is split over tensor-parallel ranks, and re-slicing shards for a new tp size.

The split rules are not kept here: they are the `Sharding` tags the parallel layers put on their
parameters, read from the model built on the meta device (no weights allocated) for the checkpoint's
ModelConfig. Re-slicing uses the same strided split the layers initialise their shards with.
"""
from __future__ import annotations

from typing import Sequence

import torch

from megatron_cogview.config import ConfigError, ModelConfig, pad_vocab_size
from megatron_cogview.parallel.sharding import NOT_SHARDED, Sharding, reslice, sharding_of
from megatron_cogview.parallel.state import ParallelState

Shapes = dict[str, tuple[tuple[int, ...], Sharding]]
"""State-dict key -> (local shape at one tp size, how the tensor is split)."""


def meta_state(tp_size: int) -> ParallelState:
    """A rank-0 description of a tp group, enough to build a model on the meta device."""
    if tp_size == 1:
        return ParallelState.single()
    return ParallelState(tp_size=tp_size, tp_rank=0, dp_size=1, dp_rank=0, rank=0, world_size=tp_size,
                         tp_ranks=tuple(range(tp_size)))


def expected_shapes(config: ModelConfig, tp_size: int) -> Shapes:
    """Key -> (local shape at tp_size, sharding) of every state-dict entry of the model `config` describes."""
    from megatron_cogview.model import CogViewModel  # built on the meta device: no memory, no communication

    model = CogViewModel(config, meta_state(tp_size), device="meta")
    params = dict(model.named_parameters())
    return {name: (tuple(tensor.shape), sharding_of(params[name]) if name in params else NOT_SHARDED)
            for name, tensor in model.state_dict().items()}


def split_rules(config: ModelConfig) -> dict[str, Sharding]:
    """State-dict key -> how it is split, for the model `config` describes (the same at every tp size)."""
    return {name: rule for name, (_, rule) in expected_shapes(config, 1).items()}


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


def reslice_param(
    shards: Sequence[torch.Tensor], rule: Sharding, out_tp: int, out_rank: int, new_size: int | None = None
) -> torch.Tensor:
    """Output rank `out_rank`'s tensor (at out_tp) from the input `shards` of one parameter, as a fresh tensor.

    Replicated tensors are copied from the first shard; `new_size` re-pads a vocab-sharded master
    (see `parallel.sharding.reslice`).
    """
    if not rule.sharded:
        return shards[0].clone()
    return reslice(shards, rule.dim, out_tp, out_rank, stride=rule.stride, new_size=new_size)
