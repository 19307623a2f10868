"""ParallelState: tensor-parallel x data-parallel process groups, passed explicitly (no globals)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_cogview.config import ConfigError


class ParallelStateError(ConfigError):
    """The parallel layout is impossible or was not initialised; the message says how to fix it."""


@dataclass(frozen=True)
class ParallelState:
    """Ranks, sizes and groups of one process in a world of tp x dp ranks.

    Tensor-parallel groups are blocks of contiguous global ranks ([0..tp-1], [tp..2tp-1], ...);
    data-parallel groups take one rank from each block ({r, r+tp, r+2tp, ...}).
    A state with world size 1 needs no torch.distributed and all its groups are None.
    Besides the Megatron-style names it offers the `mpu` methods DeepSpeed calls.
    """

    tp_size: int
    tp_rank: int
    dp_size: int
    dp_rank: int
    rank: int
    world_size: int
    tp_group: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)
    dp_group: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)
    tp_ranks: tuple[int, ...] = (0,)
    dp_ranks: tuple[int, ...] = (0,)

    @classmethod
    def single(cls) -> "ParallelState":
        """The state of a plain one-process run (no torch.distributed needed)."""
        return cls(tp_size=1, tp_rank=0, dp_size=1, dp_rank=0, rank=0, world_size=1)

    @classmethod
    def build(cls, tp_size: int = 1) -> "ParallelState":
        """Create the tp and dp groups of the initialised default process group (collective call)."""
        if not dist.is_available() or not dist.is_initialized():
            if tp_size != 1:
                raise ParallelStateError(
                    f"tensor-parallel size {tp_size} needs torch.distributed to be initialised first "
                    "(launch with deepspeed/torchrun and call init_process_group)"
                )
            return cls.single()
        world, rank = dist.get_world_size(), dist.get_rank()
        if not isinstance(tp_size, int) or tp_size < 1:
            raise ParallelStateError(f"tensor-parallel size {tp_size!r} must be an integer >= 1")
        if world % tp_size:
            raise ParallelStateError(
                f"world size {world} is not divisible by tensor-parallel size {tp_size}; "
                f"launch a multiple of {tp_size} processes or change --tensor-parallel-size"
            )
        dp_size = world // tp_size
        tp_group = dp_group = None
        my_tp: tuple[int, ...] = ()
        my_dp: tuple[int, ...] = ()
        # Every rank must create every group, in the same order.
        for block in range(dp_size):
            ranks = tuple(range(block * tp_size, (block + 1) * tp_size))
            group = dist.new_group(list(ranks))
            if rank in ranks:
                tp_group, my_tp = group, ranks
        for offset in range(tp_size):
            ranks = tuple(range(offset, world, tp_size))
            group = dist.new_group(list(ranks))
            if rank in ranks:
                dp_group, my_dp = group, ranks
        return cls(
            tp_size=tp_size,
            tp_rank=rank % tp_size,
            dp_size=dp_size,
            dp_rank=rank // tp_size,
            rank=rank,
            world_size=world,
            tp_group=tp_group,
            dp_group=dp_group,
            tp_ranks=my_tp,
            dp_ranks=my_dp,
        )

    @property
    def tp_src_rank(self) -> int:
        """Global rank of tensor-parallel rank 0 in this rank's tp group."""
        return self.tp_ranks[0]

    def check_divisible(self, name: str, value: int) -> None:
        """Raise a clear error unless `value` (a sharded dimension) divides by the tp size."""
        if value % self.tp_size:
            raise ParallelStateError(
                f"{name}={value} is not divisible by tensor-parallel size {self.tp_size}; "
                f"choose a {name} that is a multiple of {self.tp_size} or a smaller tp size"
            )

    # ---- the `mpu` interface DeepSpeed calls --------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp_size

    def get_model_parallel_group(self) -> dist.ProcessGroup | None:
        return self.tp_group

    def get_model_parallel_src_rank(self) -> int:
        return self.tp_src_rank

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_src_rank = get_model_parallel_src_rank

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp_size

    def get_data_parallel_group(self) -> dist.ProcessGroup | None:
        return self.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.dp_ranks)

    def get_pipe_parallel_world_size(self) -> int:
        return 1

    def get_pipe_parallel_rank(self) -> int:
        return 0


def require_state(state: object, who: str) -> ParallelState:
    """Return `state` if it is a ParallelState, else raise an error naming the caller."""
    if not isinstance(state, ParallelState):
        raise ParallelStateError(
            f"{who} needs a ParallelState, got {type(state).__name__}; build one with "
            "ParallelState.build(tp_size) after init_process_group, or ParallelState.single() for one process"
        )
    return state


def uses_cuda() -> bool:
    """True when this process computes on a GPU: one is visible and DeepSpeed's accelerator is not set to cpu
    (DS_ACCELERATOR=cpu pins a process, e.g. a test, to the CPU on a machine that has GPUs)."""
    return os.environ.get("DS_ACCELERATOR", "") != "cpu" and torch.cuda.is_available()


def default_device() -> torch.device:
    """The one place that decides the runtime device: this process's current CUDA device, else CPU."""
    if uses_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
