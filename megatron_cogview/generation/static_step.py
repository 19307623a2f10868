"""A shape-static decode step, for CUDA graphs and torch.compile.

The default decode step attends over the cache filled so far (`cache.length` grows by one Python int per
token), so every step has new shapes: fine on CPU, but a large model's step on a GPU is launch-bound and
cannot be captured. The static step writes K/V at a device-side slot (`KVCache.make_static`), attends over
the whole preallocated cache under a device-side mask of the filled slots, and returns the next ids: same
shapes, no host sync, no Python state read inside. It draws exactly the tokens of the default step.
"""
from __future__ import annotations

from typing import Callable

import torch

from megatron_cogview.generation.config import GenerationConfig, require
from megatron_cogview.model import CogViewModel
from megatron_cogview.model.attention import KVCache

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StaticStep:
    """next ids [c] = step(token [c], position [c], uniforms [c]), one token per row, fixed shapes."""

    def __init__(self, model: CogViewModel, cache: KVCache, choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 key_valid: torch.Tensor | None, config: GenerationConfig) -> None:
        device = cache.keys[0].device
        require(not config.cuda_graphs or device.type == "cuda",
                f"cuda_graphs needs the model on a CUDA device, not {device.type}; drop --cuda-graphs")
        self.model, self.cache, self.choose = model, cache.make_static(), choose
        self.slots = torch.arange(cache.max_len, device=device)  # [T]
        self.key_valid = key_valid  # bool [c, T]: False at pad slots of shorter prompts
        self.fn: Step = torch.compile(self._step, dynamic=False) if config.compile_step else self._step
        self.graph: _Graph | None = None
        self.use_graphs = config.cuda_graphs

    def _step(self, token: torch.Tensor, position: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        filled = self.slots <= self.cache.slot  # [T]: slots written so far, this step's included
        if self.key_valid is None:
            mask = filled.view(1, 1, 1, -1)  # [1, 1, 1, T]
        else:
            mask = (self.key_valid & filled).unsqueeze(1).unsqueeze(1)  # [c, 1, 1, T]
        hidden = self.model.hidden_states(token.unsqueeze(1), position.unsqueeze(1), mask, self.cache)  # [c, 1, h]
        return self.choose(hidden[:, -1], uniforms)

    def __call__(self, token: torch.Tensor, position: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        if not self.use_graphs:
            return self.fn(token, position, uniforms)
        if self.graph is None:
            self.graph = _Graph(self.fn, self.cache, (token, position, uniforms))
        return self.graph(token, position, uniforms)


class _Graph:
    """One CUDA graph of a step, captured after two warm-up calls; replays copy inputs into static buffers."""

    def __init__(self, fn: Step, cache: KVCache, example: tuple[torch.Tensor, ...]) -> None:
        assert cache.slot is not None
        self.inputs = tuple(x.clone() for x in example)
        slot = cache.slot.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up (allocator, cuBLAS handles); writes K/V at slots that are rewritten later
                fn(*self.inputs)
                cache.slot.copy_(slot)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # recording runs no kernels: the slot is not advanced here
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, x in zip(self.inputs, inputs):
            buffer.copy_(x)
        self.graph.replay()
        return self.output.clone()
