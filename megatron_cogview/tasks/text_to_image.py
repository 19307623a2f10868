"""Text-to-image task: prompts -> PNG per sample, grid PNG per prompt, one JSONL record per sample.

Under tensor parallelism every tp rank computes and tp rank 0 writes; with data parallelism the prompts
are split over dp ranks and each writes its own samples.rankN.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from megatron_cogview.generation import GenerationConfig, GenerationError, generate_image_codes
from megatron_cogview.model import CogViewModel
from megatron_cogview.tasks.captioning import rerank_images
from megatron_cogview.tasks.prompts import PromptLine, read_prompts
from tokenization.templates import TEXT_TO_IMAGE, text_to_image_prompt
from tokenization.unified import UnifiedTokenizer

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def sample_seed(base: int, prompt_id: str, index: int) -> int:
    """Seed of sample `index` of a prompt: stable whatever else is in the file or the batch."""
    digest = hashlib.sha256(f"{base}/{prompt_id}/{index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def tile_images(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images row by row (square-ish by default)."""
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def _as_prompt_lines(prompts: Sequence[PromptLine | str]) -> list[PromptLine]:
    return [p if isinstance(p, PromptLine) else PromptLine(f"{i + 1:04d}", p, i + 1) for i, p in enumerate(prompts)]


def generate_images(
    model: CogViewModel,
    tokenizer: UnifiedTokenizer,
    prompts: Sequence[PromptLine | str],
    num_samples: int,
    config: GenerationConfig,
    out_dir: str | Path,
    *,
    caption_model: CogViewModel | None = None,
    keep: int | None = None,
    log: Log = _stderr,
    keep_codes: bool = False,
) -> list[dict]:
    """Generate num_samples images per prompt; write PNGs, a grid and JSONL (appended); return the records.

    keep_codes: each record also holds the sample's raw codes (row-major), e.g. for super-resolution.
    """
    if num_samples < 1:
        raise GenerationError(f"num_samples={num_samples} must be >= 1")
    if tokenizer.image is None:
        raise GenerationError("generate_images needs a UnifiedTokenizer with an image tokenizer (the VQ-VAE)")
    state = model.state
    lines = _as_prompt_lines(prompts)[state.dp_rank :: state.dp_size]
    out = Path(out_dir)
    writer = state.tp_rank == 0
    jsonl = out / ("samples.jsonl" if state.dp_size == 1 else f"samples.rank{state.dp_rank}.jsonl")
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    per_call = max(1, config.max_inference_batch_size // num_samples)  # whole prompts per decode call
    for start in range(0, len(lines), per_call):
        group = lines[start : start + per_call]
        records += _generate_group(model, tokenizer, group, num_samples, config, out, caption_model, keep, log,
                                   keep_codes=keep_codes)
    if writer:
        with jsonl.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records


def encode_prompt(tokenizer: UnifiedTokenizer, line: PromptLine, max_len: int, log: Log) -> tuple[list[int], int] | str:
    """(prompt ids, text pieces cut to fit max_len) or an error message."""
    if not line.text.strip():
        return "empty prompt"
    pieces = tokenizer.text.encode(line.text)
    if not pieces:
        return "the prompt encodes to no text tokens"
    seq = text_to_image_prompt(tokenizer.layout, pieces, max_text_len=max_len)
    if seq.text_truncated:
        log(f"warning: prompt {line.id} has {len(pieces)} text tokens; the model fits {max_len}, "
            f"so the last {seq.text_truncated} were cut")
    return seq.tokens.tolist(), seq.text_truncated


def _generate_group(
    model: CogViewModel, tokenizer: UnifiedTokenizer, group: list[PromptLine], n: int, config: GenerationConfig,
    out: Path, caption_model: CogViewModel | None, keep: int | None, log: Log, *, keep_codes: bool = False,
) -> list[dict]:
    layout, grid = tokenizer.layout, tokenizer.image.grid_size
    num_codes = grid * grid
    max_len = TEXT_TO_IMAGE.text_budget(model.config.max_position_embeddings, num_codes)
    records: list[dict] = []
    ok: list[tuple[PromptLine, list[int], int]] = []
    for line in group:
        enc = encode_prompt(tokenizer, line, max_len, log)
        if isinstance(enc, str):
            log(f"prompt {line.id} (line {line.line}): {enc}; skipped")
            records.append({"id": line.id, "line": line.line, "prompt": line.text, "error": enc})
        else:
            ok.append((line, *enc))
    if not ok:
        return records
    prompts = [ids for _, ids, _ in ok for _ in range(n)]
    seeds = [sample_seed(config.seed, line.id, j) for line, _, _ in ok for j in range(n)]
    image_range = (layout.image_offset, layout.image_offset + layout.num_image_tokens)
    codes = generate_image_codes(model, prompts, num_codes, image_range, config, seeds).cpu()  # [P*n, g*g]
    codes = codes.view(len(ok), n, num_codes)
    order, losses = _select(caption_model, tokenizer, ok, codes, keep, config)
    for p, (line, _, cut) in enumerate(ok):
        images = tokenizer.image.decode(codes[p].view(n, grid, grid)) if model.state.tp_rank == 0 else []
        folder = out / line.id
        if model.state.tp_rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            tile_images([images[j] for j in order[p]]).save(folder / "grid.png")
        for rank, j in enumerate(order[p]):
            name = f"{j:03d}.png"
            if model.state.tp_rank == 0:
                images[j].save(folder / name)
            rec = {"id": line.id, "line": line.line, "prompt": line.text, "sample": j, "seed": seeds[p * n + j],
                   "file": f"{line.id}/{name}", "grid": f"{line.id}/grid.png", "text_truncated": cut,
                   "settings": config.to_dict()}
            if losses is not None:
                rec.update(caption_loss=float(losses[p, j]), rank=rank)
            if keep_codes:
                rec["codes"] = codes[p, j].tolist()
            records.append(rec)
    return records


def _select(
    caption_model: CogViewModel | None, tokenizer: UnifiedTokenizer, ok: list, codes: torch.Tensor, keep: int | None,
    config: GenerationConfig,
) -> tuple[list[list[int]], torch.Tensor | None]:
    """Per prompt, the sample order to write (best CapLoss first when a caption model is given) and the losses."""
    p, n, _ = codes.shape
    if caption_model is None:
        return [list(range(n)) for _ in range(p)], None
    sel = rerank_images(caption_model, tokenizer, [line.text for line, _, _ in ok], codes, keep or n, config)
    return sel.indices.tolist(), sel.scores


def generate_images_from_file(
    model: CogViewModel,
    tokenizer: UnifiedTokenizer,
    prompt_file: str | Path,
    num_samples: int,
    config: GenerationConfig,
    out_dir: str | Path,
    **kwargs,
) -> list[dict]:
    """generate_images on a prompt file; skipped lines are logged and written to JSONL as error records."""
    parsed = read_prompts(prompt_file)
    log: Log = kwargs.get("log", _stderr)
    for problem in parsed.problems:
        log(problem)
    out = Path(out_dir)
    if model.state.tp_rank == 0 and model.state.dp_rank == 0 and parsed.problems:
        out.mkdir(parents=True, exist_ok=True)
        name = "samples.jsonl" if model.state.dp_size == 1 else "samples.rank0.jsonl"
        with (out / name).open("a", encoding="utf-8") as f:
            for problem in parsed.problems:
                f.write(json.dumps({"error": problem}, ensure_ascii=False) + "\n")
    return generate_images(model, tokenizer, parsed.prompts, num_samples, config, out, **kwargs)


__all__ = ["sample_seed", "generate_images", "generate_images_from_file", "tile_images"]
