"""Super-resolution core: the window plan, given context, cache vs no cache, batching, position ids."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.generation import GenerationConfig, GenerationError
from megatron_cogview.generation.super_resolution import ORDERS, fill_cells, magnify, window_plan
from megatron_cogview.model import CogViewModel
from tests.generation.conftest import IMAGE
from tokenization.layout import TokenLayout
from tokenization.templates import super_resolution, super_resolution_prompt

LAYOUT = TokenLayout(num_image_tokens=IMAGE[1], num_text_tokens=704)  # the tiny model's ids (vocab 1024)
TEXTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
SAMPLED = GenerationConfig(temperature=0.9, top_k=30, seed=3, max_inference_batch_size=3)
GREEDY = GenerationConfig(temperature=0, max_inference_batch_size=3)


def builder(texts: list[list[int]]):
    def build(row: int, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = super_resolution_prompt(LAYOUT, texts[row], low)
        return torch.from_numpy(seq.tokens), torch.from_numpy(seq.position_ids)

    return build


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("grid", [8, 16, 32])
def test_window_plan_covers_the_grid_each_cell_once(grid: int, order: str) -> None:
    plan = window_plan(grid, order)
    assert [(w.row, w.col) for w in plan] == list(ORDERS[order]) and len(set(ORDERS[order])) == 9
    drawn = torch.zeros(2 * grid, 2 * grid, dtype=torch.long)
    covered = torch.zeros_like(drawn)
    for w in plan:
        assert w.sample.shape == (grid, grid)
        assert (w.low_top, w.low_left) == (w.row * grid // 4, w.col * grid // 4)  # g/2 windows at stride g/4
        assert w.low_top + grid // 2 <= grid and w.low_left + grid // 2 <= grid
        assert (w.high_top, w.high_left) == (2 * w.low_top, 2 * w.low_left)  # the block of that window at 2x
        drawn[w.high_top : w.high_top + grid, w.high_left : w.high_left + grid] += w.sample.long()
        covered[w.high_top : w.high_top + grid, w.high_left : w.high_left + grid] += 1
    assert torch.equal(drawn, torch.ones_like(drawn))  # every cell sampled exactly once
    assert int(covered.min()) >= 1 and int(plan[0].sample.sum()) == grid * grid


def test_window_orders() -> None:
    centre = [(w.row, w.col) for w in window_plan(8, "centre")]
    assert centre[0] == (1, 1) and set(centre[1:5]) == {(0, 1), (1, 0), (1, 2), (2, 1)}  # then edges, then corners
    assert [(w.row, w.col) for w in window_plan(8, "cogview")][:4] == [(0, 0), (0, 1), (0, 2), (1, 1)]
    assert [(w.row, w.col) for w in window_plan(8)] == [(r, c) for r in range(3) for c in range(3)]  # the default


def _blind_pairs(plan) -> int:
    """(sampled cell, given cell) pairs of a window where the given cell comes later in raster order (so the
    sampled one cannot see it) and is not diagonally below-left of it."""
    count = 0
    for w in plan:
        cells = w.sample.flatten().tolist()
        g = w.sample.size(0)
        for s, drawn in enumerate(cells):
            if drawn:
                count += sum(1 for t in range(s + 1, len(cells))
                             if not cells[t] and not (t // g > s // g and t % g < s % g))
    return count


def test_the_raster_plan_lets_every_window_see_its_given_cells() -> None:
    assert _blind_pairs(window_plan(8, "raster")) == 0
    assert _blind_pairs(window_plan(8, "centre")) > 0 and _blind_pairs(window_plan(8, "cogview")) > 0


def test_window_plan_rejects_bad_grids() -> None:
    for bad in (6, 2, 10):
        with pytest.raises(GenerationError, match="multiple of 4"):
            window_plan(bad)
    with pytest.raises(GenerationError, match="unknown window order"):
        window_plan(8, "spiral")


def _cells_case(n: int = 36, b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, IMAGE[1], (b, 3, 3), generator=g)
    prompts = [builder(TEXTS)(i, low[i]) for i in range(b)]
    given = torch.randint(0, IMAGE[1], (b, n), generator=g)
    mask = torch.rand(n, generator=g) < 0.5
    mask[0], mask[-1], mask[10:14] = True, False, False
    return prompts, given, mask


@pytest.mark.parametrize("config", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_fill_cells_keeps_given_context_and_matches_the_uncached_reference(model: CogViewModel, config) -> None:
    prompts, given, mask = _cells_case()
    seeds = [21, 22, 23, 24]
    cached = fill_cells(model, prompts, given, mask, config, IMAGE, seeds)
    naive = fill_cells(model, prompts, given, mask, config, IMAGE, seeds, use_cache=False)
    assert torch.equal(cached, naive)
    assert torch.equal(cached[:, ~mask], given[:, ~mask])  # given cells are never overwritten
    assert int(cached.min()) >= IMAGE[0] and int(cached.max()) < IMAGE[1]
    alone = [fill_cells(model, [prompts[i]], given[i : i + 1], mask, config, IMAGE, [seeds[i]])[0] for i in range(4)]
    assert torch.equal(torch.stack(alone), cached)  # a batch of rows == each row alone


def test_given_context_changes_the_sampled_cells(model: CogViewModel) -> None:
    prompts, given, mask = _cells_case()
    a = fill_cells(model, prompts, given, mask, GREEDY, IMAGE, [0] * 4)
    b = fill_cells(model, prompts, (given + 7) % IMAGE[1], mask, GREEDY, IMAGE, [0] * 4)
    later = mask.clone()
    later[: int((~mask).nonzero()[0])] = False  # sampled cells after the first given one see the context
    assert not torch.equal(a[:, later], b[:, later])


def test_positions_restart_at_roi2_like_training(model: CogViewModel) -> None:
    low, high = torch.randint(0, 256, (4, 4)), torch.randint(0, 256, (8, 8))
    train = super_resolution(LAYOUT, TEXTS[2], low, high, seq_len=100)
    prompt = super_resolution_prompt(LAYOUT, TEXTS[2], low)
    seen: list[torch.Tensor] = []
    original = model.hidden_states

    def spy(tokens, position_ids=None, mask=None, cache=None):  # type: ignore[no-untyped-def]
        seen.append(position_ids.reshape(-1).clone())
        return original(tokens, position_ids, mask, cache)

    model.hidden_states = spy  # type: ignore[method-assign]
    try:
        given = torch.from_numpy(train.tokens[len(prompt) : len(prompt) + 64]).unsqueeze(0)
        mask = torch.zeros(64, dtype=torch.bool)
        mask[[5, 6, 40]] = True
        fill_cells(model, [(torch.from_numpy(prompt.tokens), torch.from_numpy(prompt.position_ids))], given, mask,
                   GREEDY, IMAGE, [0])
    finally:
        del model.hidden_states
    fed = torch.cat(seen)
    n = len(prompt) + 63  # the prompt and every high cell but the last one are fed
    assert torch.equal(fed, torch.from_numpy(train.position_ids[:n]))
    roi2 = int((torch.from_numpy(train.tokens) == LAYOUT.command("ROI2")).nonzero()[0])
    assert int(fed[roi2]) == 0 and int(fed[roi2 - 1]) > 0


def test_magnify_cache_batch_and_determinism(model: CogViewModel) -> None:
    codes = torch.randint(0, IMAGE[1], (3, 8, 8), generator=torch.Generator().manual_seed(1))
    texts = TEXTS[:3]
    seeds = [5, 6, 7]
    greedy = magnify(model, codes, builder(texts), GREEDY, IMAGE, seeds)
    assert greedy.shape == (3, 16, 16) and int(greedy.max()) < IMAGE[1]
    assert torch.equal(greedy, magnify(model, codes, builder(texts), GREEDY, IMAGE, seeds))
    naive = magnify(model, codes[:1], builder(texts), GREEDY, IMAGE, seeds[:1], use_cache=False)  # slow: one grid
    assert torch.equal(greedy[:1], naive)
    sampled = magnify(model, codes, builder(texts), SAMPLED, IMAGE, seeds)
    for i in range(3):
        alone = magnify(model, codes[i : i + 1], builder(texts[i : i + 1]), SAMPLED, IMAGE, [seeds[i]])
        assert torch.equal(alone[0], sampled[i]), f"grid {i} changed with its batch"


def test_magnify_never_overwrites_earlier_windows(model: CogViewModel) -> None:
    codes = torch.randint(0, IMAGE[1], (2, 8, 8), generator=torch.Generator().manual_seed(2))
    snapshots: list[bool] = []
    plan = window_plan(8)
    import megatron_cogview.generation.super_resolution as core

    real_fill = core.fill_cells

    def recording_fill(model, prompts, given, sample_mask, *args, **kwargs):  # type: ignore[no-untyped-def]
        got = real_fill(model, prompts, given, sample_mask, *args, **kwargs)
        snapshots.append(torch.equal(got[:, ~sample_mask], given[:, ~sample_mask]))
        return got

    core.fill_cells = recording_fill
    try:
        magnify(model, codes, builder(TEXTS), SAMPLED, IMAGE, [1, 2])
    finally:
        core.fill_cells = real_fill
    assert snapshots == [True] * len(plan)
    assert sum(int(w.sample.sum()) for w in plan) == 16 * 16


def test_positions_that_do_not_fit_are_refused(model: CogViewModel) -> None:
    prompts, given, mask = _cells_case(n=130)
    with pytest.raises(GenerationError, match="positions"):
        fill_cells(model, prompts, given, torch.ones(130, dtype=torch.bool), GREEDY, IMAGE, [0] * 4)
