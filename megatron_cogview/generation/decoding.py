"""Batched, KV-cached decoding on CogViewModel.

Prompts of different lengths are left-aligned and right-padded to the longest one in a chunk: pad
keys are masked out of attention for the rest of the run and each row's position ids continue from
its own length, so a row sees exactly what it would see alone. Equal-length chunks run without any
mask. The cache is preallocated for prompt + new tokens and written in place, one token per step.
Randomness is per sample (see sampling.py). A step makes no host sync unless `stop_ids` are given;
then it makes one, and rows that stopped leave the batch (KVCache.reorder).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from megatron_cogview.generation.config import GenerationConfig, require
from megatron_cogview.generation.logits import IdRanges, range_logits
from megatron_cogview.generation.sampling import draw_uniforms, sample
from megatron_cogview.generation.static_step import StaticStep
from megatron_cogview.model import CogViewModel

Prompt = Sequence[int] | torch.Tensor
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DecodeResult:
    """New tokens per row and how many each row made (a stop id is included and counted)."""

    tokens: torch.Tensor  # long [b, max_new_tokens]; fill_id after a row stopped
    lengths: torch.Tensor  # long [b]

    def row(self, i: int) -> list[int]:
        """The generated ids of row i, up to its length."""
        return self.tokens[i, : int(self.lengths[i])].tolist()


@contextmanager
def inference(model: CogViewModel) -> Iterator[None]:
    """eval mode, no autograd, no per-forward input checks (they sync); restored afterwards."""
    was_training, validate = model.training, model.validate_inputs
    model.eval()
    model.validate_inputs = False
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
        model.validate_inputs = validate


def check_prompts(model: CogViewModel, prompts: Sequence[Prompt], max_new_tokens: int) -> list[torch.Tensor]:
    """Prompts as 1-D long tensors, after checking ids and that prompt + new tokens fit the position table."""
    c = model.config
    require(len(prompts) > 0, "no prompts to generate from")
    require(isinstance(max_new_tokens, int) and max_new_tokens >= 1, f"max_new_tokens={max_new_tokens!r} must be >= 1")
    out = []
    for i, p in enumerate(prompts):
        t = torch.as_tensor(p, dtype=torch.long).reshape(-1)
        require(t.numel() > 0, f"prompt {i} is empty; a prompt needs at least one token")
        lo, hi = int(t.min()), int(t.max())
        require(0 <= lo and hi < c.vocab_size, f"prompt {i} has ids in [{lo}, {hi}] outside the vocabulary [0, {c.vocab_size})")
        require(
            t.numel() + max_new_tokens <= c.max_position_embeddings,
            f"prompt {i} has {t.numel()} tokens; with {max_new_tokens} new tokens it needs "
            f"{t.numel() + max_new_tokens} positions but the model has {c.max_position_embeddings}; shorten the prompt",
        )
        out.append(t)
    return out


class NextTokenSampler:
    """Turns last hidden states [b, h] into the next ids [b] under the allowed ranges."""

    def __init__(self, model: CogViewModel, config: GenerationConfig, allowed: IdRanges | None, device: torch.device):
        self.model, self.config = model, config
        vocab = model.config.vocab_size
        self.lo, self.hi = allowed.span if allowed is not None else (0, vocab)
        self.full = allowed is None or (self.lo, self.hi) == (0, vocab)
        self.mask = None if allowed is None or allowed.contiguous else allowed.span_mask(device)  # [span]

    def __call__(self, last: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        if self.full:
            logits = self.model.logits(last, gather=True)  # [b, V]
        else:
            logits = range_logits(self.model, last, self.lo, self.hi)  # [b, hi - lo]
        return sample(logits, self.config, uniforms, self.mask) + self.lo


def decode(
    model: CogViewModel,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    config: GenerationConfig,
    *,
    allowed: IdRanges | Sequence[tuple[int, int]] | None = None,
    stop_ids: Sequence[int] = (),
    seeds: Sequence[int] | None = None,
    fill_id: int = -1,
    progress: Progress | None = None,
) -> DecodeResult:
    """Generate up to max_new_tokens ids after each prompt, drawing only `allowed` ids (default: any).

    progress(done, total) is called after each step with the token steps done over all chunks (no host sync).
    """
    rows = check_prompts(model, prompts, max_new_tokens)
    b = len(rows)
    seeds = list(seeds) if seeds is not None else [config.seed + i for i in range(b)]
    require(len(seeds) == b, f"got {len(seeds)} seeds for {b} prompts; pass one seed per prompt")
    if allowed is not None and not isinstance(allowed, IdRanges):
        allowed = IdRanges.of(allowed, model.config.vocab_size)
    device = model.word_embeddings.weight.device
    out = torch.full((b, max_new_tokens), fill_id, dtype=torch.long, device=device)
    lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=device)
    sampler = NextTokenSampler(model, config, allowed, device)
    stops = torch.tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long, device=device)
    cap = config.max_inference_batch_size
    chunks = range(0, b, cap)
    with inference(model):
        for i, start in enumerate(chunks):
            index = torch.arange(start, min(start + cap, b), device=device)
            uniforms = draw_uniforms(seeds[start : start + cap], max_new_tokens, device)  # [c, T]
            step_done = None if progress is None else _chunk_progress(progress, i, len(chunks), max_new_tokens)
            _decode_chunk(model, rows[start : start + cap], index, uniforms, sampler, stops, out, lengths, step_done)
    return DecodeResult(out, lengths)


def _decode_chunk(
    model: CogViewModel,
    prompts: list[torch.Tensor],
    index: torch.Tensor,
    uniforms: torch.Tensor,
    choose: NextTokenSampler,
    stops: torch.Tensor,
    out: torch.Tensor,
    lengths: torch.Tensor,
    step_done: Callable[[int], None] | None = None,
) -> None:
    """Prefill one chunk of prompts, then decode step by step, writing ids into out[index]."""
    device, steps = out.device, out.size(1)
    lens_list = [p.numel() for p in prompts]
    width = max(lens_list)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : p.numel()] = p
    tokens = tokens.to(device)  # [c, L], right-padded with id 0 (masked out)
    lens = torch.tensor(lens_list, dtype=torch.long, device=device)  # [c]
    cache = model.new_cache(len(prompts), width + steps)
    key_valid = None  # bool [c, L + T]: pad slots of shorter prompts are never attended to
    if min(lens_list) != width:
        key_valid = torch.ones(len(prompts), width + steps, dtype=torch.bool, device=device)
        key_valid[:, :width] = torch.arange(width, device=device).unsqueeze(0) < lens.unsqueeze(1)
    mask = None if key_valid is None else key_valid[:, None, None, :width]  # [c, 1, 1, L]
    positions = torch.arange(width, device=device).unsqueeze(0)  # [1, L]
    hidden = model.hidden_states(tokens, positions, mask, cache)  # [c, L, h]
    last = hidden[torch.arange(len(prompts), device=device), lens - 1]  # [c, h] at each prompt's end
    next_pos = lens.clone()  # [c]
    if choose.config.static and not stops.numel():
        _static_steps(StaticStep(model, cache, choose, key_valid, choose.config), choose(last, uniforms[:, 0]),
                      next_pos, uniforms, index, out, step_done)
        return
    for t in range(steps):
        token = choose(last, uniforms[:, t])  # [c]
        out[index, t] = token
        if step_done is not None:
            step_done(t + 1)
        if stops.numel():
            done = torch.isin(token, stops)
            n_done = int(done.sum())  # the one host sync of this step
            if n_done:
                lengths[index[done]] = t + 1
                if n_done == index.numel():
                    return
                keep = (~done).nonzero().squeeze(1)
                cache.reorder(keep)
                index, token, next_pos, uniforms = index[keep], token[keep], next_pos[keep], uniforms[keep]
                key_valid = None if key_valid is None else key_valid[keep]
        if t == steps - 1:
            return
        step_mask = None if key_valid is None else key_valid[:, None, None, : cache.length + 1]  # [c, 1, 1, k]
        hidden = model.hidden_states(token.unsqueeze(1), next_pos.unsqueeze(1), step_mask, cache)  # [c, 1, h]
        last = hidden[:, -1]
        next_pos = next_pos + 1


def _static_steps(step: StaticStep, token: torch.Tensor, position: torch.Tensor, uniforms: torch.Tensor,
                  index: torch.Tensor, out: torch.Tensor, step_done: Callable[[int], None] | None) -> None:
    """Decode with fixed-shape steps (no stop ids): feed each new token, draw the next, until out is full."""
    out[index, 0] = token
    if step_done is not None:
        step_done(1)
    for t in range(1, out.size(1)):
        token = step(token, position, uniforms[:, t])  # [c]
        position = position + 1
        out[index, t] = token
        if step_done is not None:
            step_done(t + 1)


def _chunk_progress(progress: Progress, chunk: int, chunks: int, steps: int) -> Callable[[int], None]:
    """Turn 'step t of this chunk' into progress(done, total) over all chunks."""
    return lambda t: progress(chunk * steps + t, chunks * steps)
