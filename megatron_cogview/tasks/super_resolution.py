"""Super-resolution wiring: text + code grids through the SR template into the generation core, images in/out.

An SR checkpoint records the task of its training data ("superres") and the high-res image size, so
its grid g (high-res codes per side) is known: `upscale` maps g/2 x g/2 codes to g x g in one pass,
`magnify` maps g x g codes to 2g x 2g with the sliding windows (generation/super_resolution.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from megatron_cogview.generation import GenerationConfig, GenerationError
from megatron_cogview.generation.super_resolution import DEFAULT_ORDER, PromptBuilder, fill_cells, magnify
from megatron_cogview.model import CogViewModel
from tokenization.templates import sr_template, super_resolution_prompt
from tokenization.unified import UnifiedTokenizer

Log = Callable[[str], None]
MODES = ("magnify", "single")


@dataclass(frozen=True)
class SRModel:
    """A loaded super-resolution model and the high-res grid it was fine-tuned on."""

    model: CogViewModel
    tokenizer: UnifiedTokenizer
    grid: int  # g: the model writes g x g high-res codes after g/2 x g/2 low-res codes
    family: str = "ours"  # template family (tokenization.templates.SR_SECOND_SEGMENT); from the checkpoint's extra

    def input_grid(self, mode: str) -> int:
        """Codes per side of the input grid of a mode: g/2 for one pass, g for magnify."""
        return self.grid if mode == "magnify" else self.grid // 2


def sr_grid(tokenizers: dict[str, Any], downsample: int, name: str) -> int:
    """The high-res grid g of a checkpoint's tokenizer record; GenerationError unless it is an SR model."""
    task = tokenizers.get("task")
    if task != "superres":
        raise GenerationError(f"checkpoint {name!r} is not a super-resolution model (its training data task is "
                              f"{task or 'not recorded'}); fine-tune one with `python -m megatron_cogview.finetune.super_resolution`")
    size = int(tokenizers.get("image_size") or 0)
    if size <= 0 or size % (2 * downsample):
        raise GenerationError(f"checkpoint {name!r} records high-res image size {size}, which the VQ-VAE (downsample "
                              f"{downsample}) cannot split into low/high grids; was it trained with this VQ-VAE?")
    return size // downsample


def check_fits(sr: SRModel) -> None:
    """GenerationError unless `[ROI2] [BASE] [BOI2]` and g x g high-res codes fit the model's position table."""
    layout = sr.tokenizer.layout
    prompt = super_resolution_prompt(layout, [], torch.zeros(sr.grid // 2, sr.grid // 2, dtype=torch.long), sr.family)
    need = int(prompt.position_ids[-1]) + sr.grid * sr.grid  # the last high-res code is never an input
    if need > sr.model.config.max_position_embeddings:
        raise GenerationError(f"the SR model's {sr.grid}x{sr.grid} high-res grid needs {need} positions but the model "
                              f"has {sr.model.config.max_position_embeddings}; is the checkpoint's image size right?")


def prompt_builder(sr: SRModel, texts: Sequence[str], log: Log) -> PromptBuilder:
    """Row i -> the SR prompt of texts[i] and a low-res window (text cut to what the position table fits)."""
    layout = sr.tokenizer.layout
    low = (sr.grid // 2) ** 2
    room = sr_template(sr.family).text_budget(sr.model.config.max_position_embeddings, low, positions=True)
    ids = []
    for i, text in enumerate(texts):
        pieces = sr.tokenizer.text.encode(text) if text.strip() else []
        if len(pieces) > room:
            log(f"warning: super-resolution text {i} has {len(pieces)} tokens; the model fits {room}, the rest is cut")
        ids.append(pieces[:room])

    def build(row: int, low_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = super_resolution_prompt(layout, ids[row], low_codes, sr.family)
        return torch.from_numpy(seq.tokens), torch.from_numpy(seq.position_ids)

    return build


def _check_grid(codes: torch.Tensor, want: int, what: str) -> None:
    if codes.dim() != 3 or codes.size(1) != want or codes.size(2) != want:
        raise GenerationError(f"{what} must be {want}x{want} code grids, got {tuple(codes.shape[1:])}; "
                              f"use images of {want} codes per side (or the other --mode)")


def upscale(
    sr: SRModel, texts: Sequence[str], low: torch.Tensor, config: GenerationConfig, seeds: Sequence[int],
    log: Log = print, use_cache: bool = True,
) -> torch.Tensor:
    """One pass: raw low-res codes [b, g/2, g/2] -> raw high-res codes [b, g, g]."""
    g = sr.grid
    _check_grid(low, g // 2, "one-pass super-resolution inputs")
    layout, b = sr.tokenizer.layout, low.size(0)
    build = prompt_builder(sr, texts, log)
    prompts = [build(i, low[i]) for i in range(b)]
    image_range = (layout.image_offset, layout.image_offset + layout.num_image_tokens)
    given = torch.zeros(b, g * g, dtype=torch.long)
    ids = fill_cells(sr.model, prompts, given, torch.ones(g * g, dtype=torch.bool), config, image_range, seeds,
                     use_cache=use_cache)
    return (ids.cpu() - layout.image_offset).view(b, g, g)


def magnify_codes(
    sr: SRModel, texts: Sequence[str], codes: torch.Tensor, config: GenerationConfig, seeds: Sequence[int],
    log: Log = print, order: str = DEFAULT_ORDER, use_cache: bool = True,
) -> torch.Tensor:
    """Sliding windows: raw codes [b, g, g] -> raw codes [b, 2g, 2g]."""
    _check_grid(codes, sr.grid, "magnify inputs")
    layout = sr.tokenizer.layout
    image_range = (layout.image_offset, layout.image_offset + layout.num_image_tokens)
    from tqdm import tqdm

    with tqdm(total=9, desc="magnify windows", unit="window", leave=False, disable=None) as bar:
        return magnify(sr.model, codes, prompt_builder(sr, texts, log), config, image_range, seeds, order=order,
                       use_cache=use_cache, progress=lambda done, total: bar.update(1))


def super_resolve(
    sr: SRModel, texts: Sequence[str], codes: torch.Tensor, config: GenerationConfig, seeds: Sequence[int],
    mode: str = "magnify", log: Log = print, order: str = DEFAULT_ORDER,
) -> torch.Tensor:
    """Raw codes at the mode's input grid -> raw codes at twice the grid (see upscale / magnify_codes)."""
    if mode not in MODES:
        raise GenerationError(f"unknown super-resolution mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "single":
        return upscale(sr, texts, codes, config, seeds, log)
    return magnify_codes(sr, texts, codes, config, seeds, log, order)


def image_codes(sr: SRModel, images: Sequence[Image.Image], mode: str, names: Sequence[str], log: Log) -> torch.Tensor:
    """VQ codes [b, n, n] of images at the mode's input size; other sizes are resized (with a warning)."""
    vq = sr.tokenizer.image
    if vq is None:
        raise GenerationError("super-resolution of images needs a UnifiedTokenizer with the VQ-VAE")
    size = sr.input_grid(mode) * vq.downsample
    for name, im in zip(names, images):
        if im.size != (size, size):
            log(f"warning: {name} is {im.size[0]}x{im.size[1]} px; resized (shorter side, centre crop) to "
                f"{size}x{size}, the {mode} input size of this SR model")
    return vq.encode(list(images), image_size=size)


__all__ = ["MODES", "SRModel", "check_fits", "image_codes", "magnify_codes", "prompt_builder", "sr_grid", "super_resolve", "upscale"]
