"""`cogview generate super-resolution` and the `--super-resolution` step of `cogview generate text2image`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from megatron_cogview.config import ConfigError
from megatron_cogview.generation.super_resolution import DEFAULT_ORDER, ORDERS

ORDER_HELP = (f"window order of magnify (default {DEFAULT_ORDER}): raster (row by row), centre (centre first, then "
              "edges, then corners) or cogview (the original code's)")


def add_chain_flags(p: argparse.ArgumentParser) -> None:
    """Flags of text2image that magnify its (post-selected) samples with an SR model."""
    p.add_argument("--super-resolution", default="", metavar="SR_CHECKPOINT",
                   help="also write each kept sample at 2x the pixels with this super-resolution checkpoint "
                   "(after post-selection: with --keep only the best are magnified)")
    p.add_argument("--sr-order", default=DEFAULT_ORDER, choices=tuple(ORDERS), help=ORDER_HELP)


def register(tasks: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the `super-resolution` task to `cogview generate`."""
    p = tasks.add_parser("super-resolution", help="images at 2x the pixels with a super-resolution checkpoint")
    common(p)
    p.add_argument("images", nargs="+", help="image files (resized, with a warning, to the mode's input size)")
    p.add_argument("--prompt", default="", help="text describing the images (the SR model is text-conditioned)")
    p.add_argument("--mode", default="magnify", choices=("magnify", "single"),
                   help="magnify: g x g codes -> 2g x 2g by sliding windows (the 512 px path); single: one pass "
                   "g/2 x g/2 -> g x g, g being the grid the SR model was fine-tuned on")
    p.add_argument("--order", default=DEFAULT_ORDER, choices=tuple(ORDERS), help=ORDER_HELP)
    p.add_argument("--out", default="superres", help="output folder (PNG per image and sample, superres.jsonl)")
    p.set_defaults(func=run_super_resolution)


def load_sr(args: argparse.Namespace, load: str):
    """The SRModel of a checkpoint (one clear error if it is not a super-resolution model)."""
    from megatron_cogview.checkpoint.layout import read_meta
    from megatron_cogview.commands.generate import load_for_generation
    from megatron_cogview.tasks.super_resolution import SRModel, check_fits, sr_grid

    if not Path(load).exists():
        raise ConfigError(f"super-resolution checkpoint {load!r} does not exist")
    _, meta = read_meta(load)
    model, tok = load_for_generation(args, load)
    sr = SRModel(model, tok, sr_grid(meta.tokenizers, tok.image.downsample, load), meta.extra.get("template", "ours"))
    check_fits(sr)
    return sr


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_super_resolution(args: argparse.Namespace) -> int:
    """Super-resolve image files; one JSON line per written image."""
    from PIL import Image, UnidentifiedImageError

    from megatron_cogview.commands.generate import _gen_config
    from megatron_cogview.tasks.super_resolution import image_codes, super_resolve
    from megatron_cogview.tasks.text_to_image import sample_seed

    config = _gen_config(args)
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples} must be >= 1")
    images, names = [], []
    for path in args.images:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ConfigError(f"cannot read image {path!r}: {e}") from None
        names.append(Path(path).stem)
    sr = load_sr(args, args.load)
    codes = image_codes(sr, images, args.mode, args.images, _stderr)  # [b, n, n]
    n = args.num_samples
    batch = codes.repeat_interleave(n, dim=0)
    seeds = [sample_seed(args.seed, f"{i}:{name}", j) for i, name in enumerate(names) for j in range(n)]
    high = super_resolve(sr, [args.prompt] * len(batch), batch, config, seeds, args.mode, _stderr, args.order)
    pictures = sr.tokenizer.image.decode(high)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "superres.jsonl").open("a", encoding="utf-8") as f:
        for k, picture in enumerate(pictures):
            i, j = divmod(k, n)
            file = out / (f"{names[i]}.x2.png" if n == 1 else f"{names[i]}.x2.{j:03d}.png")
            picture.save(file)
            rec = {"image": args.images[i], "prompt": args.prompt, "sample": j, "seed": seeds[k], "mode": args.mode,
                   "file": str(file), "size": list(picture.size), "settings": config.to_dict()}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            print(json.dumps(rec, ensure_ascii=False))
    return 0


def prepare_chain(args: argparse.Namespace, tok: Any):
    """The SR model of `--super-resolution` (None without it), checked against the text-to-image model first."""
    from megatron_cogview.generation import GenerationError

    if not args.super_resolution:
        return None
    sr = load_sr(args, args.super_resolution)
    if sr.tokenizer.layout != tok.layout or sr.tokenizer.image.fingerprint() != tok.image.fingerprint():
        raise GenerationError(f"super-resolution checkpoint {args.super_resolution!r} uses other tokenizers than "
                              f"{args.load!r}; fine-tune it on data made with the text-to-image model's tokenizers")
    g = tok.image.grid_size
    if g not in (sr.grid, sr.grid // 2):
        raise GenerationError(f"text-to-image samples are {g}x{g} codes but the SR model takes {sr.grid}x{sr.grid} "
                              f"(magnify) or {sr.grid // 2}x{sr.grid // 2} (one pass); use a matching SR checkpoint")
    return sr


def chain_text2image(args: argparse.Namespace, records: list[dict[str, Any]], sr: Any) -> int:
    """Magnify the kept text2image samples (records carry their codes); returns how many were written."""
    import torch

    from megatron_cogview.commands.generate import _gen_config
    from megatron_cogview.tasks.super_resolution import super_resolve
    from megatron_cogview.tasks.text_to_image import sample_seed

    good = [r for r in records if "error" not in r]
    if not good:
        return 0
    g = int(round(len(good[0]["codes"]) ** 0.5))
    mode = "magnify" if g == sr.grid else "single"
    codes = torch.tensor([r["codes"] for r in good], dtype=torch.long).view(len(good), g, g)
    seeds = [sample_seed(r["seed"], "superres", 0) for r in good]
    high = super_resolve(sr, [r["prompt"] for r in good], codes, _gen_config(args), seeds, mode, _stderr,
                         args.sr_order)
    pictures = sr.tokenizer.image.decode(high)
    out = Path(args.out)
    with (out / "superres.jsonl").open("a", encoding="utf-8") as f:
        for r, picture, seed in zip(good, pictures, seeds):
            file = Path(r["file"]).with_suffix(".x2.png")
            picture.save(out / file)
            f.write(json.dumps({"id": r["id"], "sample": r["sample"], "source": r["file"], "file": str(file),
                                "seed": seed, "mode": mode, "size": list(picture.size)}, ensure_ascii=False) + "\n")
    return len(good)
