"""Tensor-parallel generation (tp=2, spawned gloo ranks) == the tp=1 model with the same master weights."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_cogview.config import model_preset
from megatron_cogview.generation import (
    CaptionTemplate,
    GenerationConfig,
    caption_loss,
    decode,
    generate_image_codes,
    generate_text,
    range_logits,
)
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.distributed import run_distributed

PROMPTS = [[957, 300, 301, 960, 958], [957, 420, 960, 958], [957, 500, 501, 502, 960, 958]]


def _same_on_every_rank(t: torch.Tensor) -> None:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    assert all(torch.equal(p, parts[0]) for p in parts), "tp ranks emitted different tokens"


def _tp_equals_serial(rank: int, world: int) -> None:
    cfg = model_preset("tiny")
    par = CogViewModel(cfg, ParallelState.build(2)).eval()
    ref = CogViewModel(cfg, ParallelState.single()).eval()
    # range logits: ranges inside rank 0's shard, inside rank 1's, across the boundary, everything
    hidden = torch.randn(2, 3, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    full = ref.logits(hidden)
    for lo, hi in [(0, 256), (600, 900), (400, 700), (0, 1024)]:
        got = range_logits(par, hidden, lo, hi)
        torch.testing.assert_close(got, full[..., lo:hi], rtol=1e-5, atol=1e-6)
        _same_on_every_rank(got)
    config = GenerationConfig(temperature=1.0, top_k=30, top_p=0.9, seed=4, max_inference_batch_size=2)
    codes = generate_image_codes(par, PROMPTS, 24, (0, 256), config)
    _same_on_every_rank(codes)
    assert torch.equal(codes, generate_image_codes(ref, PROMPTS, 24, (0, 256), config))
    # the shape-static step (CUDA graphs / compile) draws the same tokens at tp 2
    assert torch.equal(codes, generate_image_codes(par, PROMPTS, 24, (0, 256), config.replace(static_shapes=True)))
    greedy = GenerationConfig(temperature=0)
    assert torch.equal(decode(par, PROMPTS, 12, greedy).tokens, decode(ref, PROMPTS, 12, greedy).tokens)
    texts = generate_text(par, PROMPTS, 16, (256, 262), config, stop_ids=[1000])
    assert texts == generate_text(ref, PROMPTS, 16, (256, 262), config, stop_ids=[1000])
    template = CaptionTemplate((1000, 1001), (1002, 1003))
    images = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    caps = [[300, 301], [302], [303, 304, 305]]
    torch.testing.assert_close(caption_loss(par, images, caps, template), caption_loss(ref, images, caps, template),
                               rtol=1e-5, atol=1e-5)


def test_tp2_generation_equals_tp1() -> None:
    run_distributed(_tp_equals_serial, 2, timeout=120)
