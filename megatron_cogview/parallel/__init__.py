"""Tensor parallelism on torch.distributed (Megatron's "mpu"), with explicit state."""
from megatron_cogview.parallel.broadcast import broadcast_batch
from megatron_cogview.parallel.grad_norm import clip_grad_norm, grad_norm
from megatron_cogview.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    is_parallel_param,
)
from megatron_cogview.parallel.mappings import (
    copy_to_region,
    gather_from_region,
    reduce_from_region,
    scatter_to_region,
)
from megatron_cogview.parallel.random import MODEL_PARALLEL, REPLICATED, RNGTracker, dropout, replay_rng
from megatron_cogview.parallel.sharding import Sharding, shard, sharding_of, unshard
from megatron_cogview.parallel.state import ParallelState, ParallelStateError

__all__ = [
    "ParallelState", "ParallelStateError", "RNGTracker", "REPLICATED", "MODEL_PARALLEL", "dropout", "replay_rng",
    "copy_to_region", "reduce_from_region", "scatter_to_region", "gather_from_region",
    "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding", "is_parallel_param",
    "Sharding", "sharding_of", "shard", "unshard",
    "clip_grad_norm", "grad_norm", "broadcast_batch",
]
