"""Tensor-parallel core vs serial torch references, in spawned gloo processes on CPU.

Tolerance: fp32 with rtol 1e-5 / atol 1e-6. Sharding only reorders fp32 sums (row-parallel partial
products are added across ranks), so differences are a few ulps times sqrt(K) for K <= 256 terms,
far below these bounds, while any wrong slice or missing reduction gives O(1) errors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_cogview.model.lm_loss import fused_lm_loss
from megatron_cogview.parallel import (
    MODEL_PARALLEL,
    REPLICATED,
    ColumnParallelLinear,
    ParallelState,
    RNGTracker,
    RowParallelLinear,
    VocabParallelEmbedding,
    broadcast_batch,
    clip_grad_norm,
    copy_to_region,
    dropout,
    gather_from_region,
    reduce_from_region,
    scatter_to_region,
    shard,
    unshard,
)
from megatron_cogview.parallel.layers import init_master
from megatron_cogview.parallel.random import KEEP_BITS, keep_mask, mask_keep
from tests.distributed import run_distributed

RTOL, ATOL = 1e-5, 1e-6
CONFIGS = [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4)]


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def _groups(state: ParallelState, world: int, tp: int) -> None:
    rank = dist.get_rank()
    assert state.tp_ranks == tuple(range(rank // tp * tp, rank // tp * tp + tp))
    assert state.dp_ranks == tuple(range(rank % tp, world, tp))
    assert (state.tp_rank, state.dp_rank, state.dp_size) == (rank % tp, rank // tp, world // tp)
    # The groups really contain those members: a sum of global ranks over each group.
    t = torch.tensor([float(rank)])
    if state.tp_group is not None:
        dist.all_reduce(t, group=state.tp_group)
        assert t.item() == sum(state.tp_ranks)
    assert state.get_model_parallel_world_size() == tp and state.get_data_parallel_world_size() == world // tp


def _mappings(state: ParallelState) -> None:
    g, tp, r = state.tp_group, state.tp_size, state.tp_rank
    x = torch.arange(4 * tp, dtype=torch.float32).reshape(1, 4 * tp) + 1
    # copy: identity forward, gradient all-reduced.
    a = x.clone().requires_grad_()
    copy_to_region(a, g).mul(r + 1).sum().backward()
    close(a.grad, torch.full_like(x, sum(range(1, tp + 1))), "copy_to_region grad")
    # reduce: sum forward, identity backward.
    a = x.clone().requires_grad_()
    out = reduce_from_region(a * (r + 1), g)
    close(out, x * sum(range(1, tp + 1)), "reduce_from_region")
    out.sum().backward()
    close(a.grad, torch.full_like(x, r + 1.0), "reduce_from_region grad")
    # scatter: own slice forward, all-gather backward.
    a = x.clone().requires_grad_()
    out = scatter_to_region(a, g)
    close(out, x.chunk(tp, -1)[r], "scatter_to_region")
    (out * (r + 1)).sum().backward()
    expect = torch.cat([torch.full((1, 4), k + 1.0) for k in range(tp)], -1)
    close(a.grad, expect, "scatter_to_region grad")
    # gather: concatenation forward, own slice backward.
    part = x.chunk(tp, -1)[r].clone().requires_grad_()
    out = gather_from_region(part, g)
    close(out, x, "gather_from_region")
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    close(part.grad, torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape).chunk(tp, -1)[r], "gather grad")


def _column(state: ParallelState, stride: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    layer = ColumnParallelLinear(16, 24, state, gather_output=True, stride=stride, generator=torch.Generator().manual_seed(7))
    master = init_master((24, 16), 0.02, torch.Generator().manual_seed(7))
    close(layer.weight.data, shard(master, 0, state.tp_size, state.tp_rank, stride), "column weight shard")
    bias = torch.randn(24)
    layer.bias.data.copy_(shard(bias, 0, state.tp_size, state.tp_rank, stride))
    xp, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    wref = master.clone().requires_grad_()
    ref = F.linear(xs, wref, bias)
    # gather_output concatenates per-rank outputs: with stride the columns come back rank-major.
    perm = unshard([shard(torch.arange(24), 0, state.tp_size, k, stride) for k in range(state.tp_size)], 0, 1)
    out = layer(xp)
    close(out, ref[..., perm], "column output")
    g = torch.randn_like(ref)
    out.backward(g[..., perm])
    ref.backward(g)
    close(xp.grad, xs.grad, "column input grad")
    close(layer.weight.grad, shard(wref.grad, 0, state.tp_size, state.tp_rank, stride), "column weight grad")


def _row(state: ParallelState) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 32)
    layer = RowParallelLinear(32, 12, state, input_is_parallel=False, generator=torch.Generator().manual_seed(3))
    master = init_master((12, 32), 0.02, torch.Generator().manual_seed(3))
    layer.bias.data.normal_(generator=torch.Generator().manual_seed(4))
    xp, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    wref = master.clone().requires_grad_()
    bref = layer.bias.detach().clone().requires_grad_()
    ref = F.linear(xs, wref, bref)
    out = layer(xp)
    close(out, ref, "row output")
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    close(xp.grad, xs.grad, "row input grad")
    close(layer.weight.grad, shard(wref.grad, 1, state.tp_size, state.tp_rank), "row weight grad")
    close(layer.bias.grad, bref.grad, "row bias grad")


def _embedding(state: ParallelState) -> None:
    vocab = 64
    layer = VocabParallelEmbedding(vocab, 8, state, generator=torch.Generator().manual_seed(5))
    master = init_master((vocab, 8), 0.02, torch.Generator().manual_seed(5)).requires_grad_()
    ids = torch.randint(0, vocab, (3, 7), generator=torch.Generator().manual_seed(6))
    out, ref = layer(ids), F.embedding(ids, master)
    close(out, ref, "embedding output")
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(8))
    out.backward(g)
    ref.backward(g)
    close(layer.weight.grad, shard(master.grad, 0, state.tp_size, state.tp_rank), "embedding weight grad")


def _lm_loss(state: ParallelState) -> None:
    # the fused, chunked loss on this rank's vocab slice (3 chunks) vs cross entropy over the full logits
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(18, 8, generator=gen).requires_grad_()
    weight = torch.randn(64, 8, generator=gen).requires_grad_()
    target = torch.randint(0, 64, (18,), generator=gen)
    w = torch.rand(18, generator=gen)
    local_h = hidden.detach().clone().requires_grad_()
    local_w = weight.detach().chunk(state.tp_size, 0)[state.tp_rank].clone().requires_grad_()
    total, per_token = fused_lm_loss(copy_to_region(local_h, state.tp_group), local_w, target, w, state.tp_group,
                                     chunk_elements=7 * local_w.size(0))
    ref = F.cross_entropy(hidden @ weight.t(), target, reduction="none")
    close(per_token, ref.detach(), "lm loss per token")
    ref_total = (ref * w).sum()
    close(total, ref_total.detach(), "lm loss total")
    total.backward()
    ref_total.backward()
    close(local_h.grad, hidden.grad, "lm loss hidden grad")
    close(local_w.grad, weight.grad.chunk(state.tp_size, 0)[state.tp_rank], "lm loss weight grad")


def _rng(state: ParallelState) -> None:
    tracker = RNGTracker.for_model(seed=11, state=state)
    saved = tracker.get_states()
    x = torch.ones(1000)
    mp = dropout(x, 0.5, tracker.generator(MODEL_PARALLEL), training=True)
    rep = dropout(x, 0.5, tracker.generator(REPLICATED), training=True)
    both = torch.stack([mp, rep])
    if state.tp_size > 1:
        gathered = [torch.empty_like(both) for _ in range(state.tp_size)]
        dist.all_gather(gathered, both, group=state.tp_group)
        for other_rank, other in enumerate(gathered):
            assert torch.equal(other[1], rep), "replicated stream differs across tp peers"
            if other_rank != state.tp_rank:
                assert not torch.equal(other[0], mp), "model-parallel stream equal across tp peers"
    tracker.set_states(saved)
    again = torch.stack([dropout(x, 0.5, tracker.generator(MODEL_PARALLEL), True),
                         dropout(x, 0.5, tracker.generator(REPLICATED), True)])
    assert torch.equal(again, both), "restored RNG states do not replay the same masks"


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1, 1.0, 0.0])
def test_keep_mask_is_one_16_bit_lane_per_element_of_the_generators_64_bit_draws(keep: float) -> None:
    """Reference in numpy: the generator's full-range int64 words, split little-endian into four int16 lanes."""
    n = 4 * 2500 + 3  # not a multiple of four: the last word is used in part
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=torch.Generator().manual_seed(5))
    lanes = words.numpy().astype("<i8").view("<i2")[:n].astype(np.int64) + (1 << 15)  # uniform on [0, 2^16)
    want = lanes < round(keep * (1 << KEEP_BITS))
    got = keep_mask(torch.empty(n), keep, torch.Generator().manual_seed(5))
    assert np.array_equal(got.numpy().astype(bool), want)
    assert mask_keep(keep) == round(keep * 65536) / 65536 and abs(mask_keep(keep) - keep) <= 2**-17
    if 0 < keep < 1:  # every lane position of a word is uniform (the top lane too: full-range draws)
        for pos in range(4):
            frac = float(got[pos::4].mean())
            assert abs(frac - keep) < 5 * math.sqrt(keep * (1 - keep) / len(got[pos::4]))


def test_dropout_keeps_the_expectation_exactly() -> None:
    """E[dropout(x)] = x: the scale is 1 / the probability the mask really keeps with, not 1 / (1 - p)."""
    x = torch.ones(2000, 1000, dtype=torch.float64)
    p = 0.1
    out = dropout(x, p, torch.Generator().manual_seed(0), training=True)
    kept = out != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 65536 / round(0.9 * 65536)))
    n = x.numel()
    assert abs(float(out.sum()) - n) < 5 * math.sqrt(n * mask_keep(0.9) * (1 - mask_keep(0.9))) / mask_keep(0.9)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_keep_mask_draws_keep_with_its_probability_in_every_dtype(keep: float) -> None:
    like = torch.empty(400, 1000)
    masks = {dtype: keep_mask(like, keep, torch.Generator().manual_seed(3), dtype)
             for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)}
    ref = masks[torch.float32]
    assert set(ref.unique().tolist()) <= {0.0, 1.0} and ref.shape == like.shape
    for dtype, mask in masks.items():  # the same draw whatever the mask's dtype
        assert mask.dtype == dtype and torch.equal(mask.float(), ref)
    n = like.numel()  # binomial(n, keep): the kept count lies within 5 standard deviations
    assert abs(float(ref.sum()) - n * keep) < 5 * math.sqrt(n * keep * (1 - keep))
    rows = ref.mean(dim=1)  # and no structure: every row of 1000 within 5 sd of keep
    assert float((rows - keep).abs().max()) < 5 * math.sqrt(keep * (1 - keep) / 1000)
    again = keep_mask(like, keep, torch.Generator().manual_seed(3))
    other = keep_mask(like, keep, torch.Generator().manual_seed(4))
    assert torch.equal(again, ref) and not torch.equal(other, ref)


def _grad_norm(state: ParallelState) -> None:
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    col = ColumnParallelLinear(8, 16, state, generator=gen(1))
    row = RowParallelLinear(16, 8, state, generator=gen(2))
    w1, w2 = init_master((16, 8), 0.02, gen(1)), init_master((8, 16), 0.02, gen(2))
    ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    with torch.no_grad():
        ref[0].weight.copy_(w1)
        ref[0].bias.zero_()
        ref[1].weight.copy_(w2)
        ref[1].bias.zero_()
    x = torch.randn(4, 8, generator=gen(3))
    (row(col(x)) ** 2).sum().mul(100).backward()
    (ref(x) ** 2).sum().mul(100).backward()
    params = list(col.parameters()) + list(row.parameters())
    norm = clip_grad_norm(params, 1e-3, state)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e-3).item()
    assert abs(norm - ref_norm) <= 1e-5 * ref_norm, (norm, ref_norm)
    close(col.weight.grad, shard(ref[0].weight.grad, 0, state.tp_size, state.tp_rank), "clipped column grad")
    close(row.bias.grad, ref[1].bias.grad, "clipped replicated grad")


def _broadcast(state: ParallelState) -> None:
    batch = None
    if state.tp_rank == 0:  # each data-parallel block sends its own batch
        batch = {
            "tokens": torch.arange(6).reshape(2, 3) + 100 * state.dp_rank,
            "mask": torch.tensor([[True, False, True]]),
            "weights": torch.tensor([0.5, 2.0]),
            "keys": [f"dp{state.dp_rank}-a", f"dp{state.dp_rank}-b"],
        }
    out = broadcast_batch(batch, state)
    assert torch.equal(out["tokens"], torch.arange(6).reshape(2, 3) + 100 * state.dp_rank)
    assert out["mask"].dtype == torch.bool and out["mask"].tolist() == [[True, False, True]]
    assert out["weights"].tolist() == [0.5, 2.0]
    assert out["keys"] == [f"dp{state.dp_rank}-a", f"dp{state.dp_rank}-b"]


def _all_checks(rank: int, world: int, tp: int) -> None:
    state = ParallelState.build(tp)
    _groups(state, world, tp)
    _mappings(state)
    for stride in (1, 3):
        _column(state, stride)
    _row(state)
    _embedding(state)
    _lm_loss(state)
    _rng(state)
    _grad_norm(state)
    _broadcast(state)


@pytest.mark.parametrize("world,tp", CONFIGS, ids=[f"world{w}-tp{t}" for w, t in CONFIGS])
def test_parallel_core_matches_serial(world: int, tp: int) -> None:
    run_distributed(_all_checks, world, tp)


def test_single_process_state_needs_no_distributed() -> None:
    state = ParallelState.single()
    _mappings(state)
    _column(state, 3)
    _row(state)
    _embedding(state)
    _lm_loss(state)
    _grad_norm(state)


def test_shard_unshard_round_trip_with_stride() -> None:
    master = torch.arange(24 * 2).reshape(24, 2)
    shards = [shard(master, 0, 2, r, stride=3) for r in range(2)]
    # shard 0 holds [Q_0; K_0; V_0]: rows 0-3, 8-11, 16-19.
    assert shards[0][:, 0].tolist() == [0, 2, 4, 6, 16, 18, 20, 22, 32, 34, 36, 38]
    assert torch.equal(unshard(shards, 0, stride=3), master)


def test_shard_equals_a_chunk_reference_and_rejects_uneven_splits() -> None:
    master = torch.randn(24, 12)
    for dim, tp, stride in [(0, 1, 1), (0, 2, 3), (0, 4, 3), (0, 8, 1), (1, 2, 1), (1, 4, 3), (1, 2, 2)]:
        chunks = master.chunk(tp * stride, dim=dim)  # stride blocks, each cut in tp parts; rank r: part r of each
        for r in range(tp):
            assert torch.equal(shard(master, dim, tp, r, stride), torch.cat(chunks[r::tp], dim=dim)), (dim, tp, stride)
    with pytest.raises(ValueError, match="dimension of size 12 does not split into 8 shards x stride 1"):
        shard(master, 1, 8, 0)


def _bad_tp(rank: int, world: int) -> None:
    from megatron_cogview.parallel import ParallelStateError

    with pytest.raises(ParallelStateError, match="world size 2 is not divisible by tensor-parallel size 4"):
        ParallelState.build(4)
    state = ParallelState.build(2)
    with pytest.raises(ParallelStateError, match="vocab_size=63 is not divisible by tensor-parallel size 2"):
        VocabParallelEmbedding(63, 8, state)
    with pytest.raises(ParallelStateError, match="in_features=15 is not divisible"):
        RowParallelLinear(15, 8, state)


def test_bad_parallel_layouts_raise_clear_errors() -> None:
    run_distributed(_bad_tp, 2)


def test_layer_without_state_raises_clear_error() -> None:
    from megatron_cogview.parallel import ParallelStateError

    with pytest.raises(ParallelStateError, match="ColumnParallelLinear needs a ParallelState, got NoneType"):
        ColumnParallelLinear(4, 4, None)  # type: ignore[arg-type]
    with pytest.raises(ParallelStateError, match="tensor-parallel size 2 needs torch.distributed"):
        ParallelState.build(2)


def _fails_on_rank_1(rank: int, world: int) -> None:
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    dist.barrier()  # rank 0 would hang here without the runner's fail-fast


def test_a_failing_rank_fails_fast() -> None:
    # Without fail-fast the surviving rank would hang in the barrier until the 30 s runner
    # timeout, and the error would read "timed out" instead of naming the failing rank.
    with pytest.raises(AssertionError, match="rank 1 failed:(.|\n)*boom on rank 1"):
        run_distributed(_fails_on_rank_1, 2, timeout=30)
