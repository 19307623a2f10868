"""`cogview generate text2image | image2text`: sampling from a trained checkpoint (single process)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from megatron_cogview.commands import super_resolution as sr_command
from megatron_cogview.config import ConfigError
from megatron_cogview.dataclass_flags import add_flags, flag_values
from megatron_cogview.generation.config import GenerationConfig

# GenerationConfig fields with a flag in generate and evaluate; generate adds the decode-step ones
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed", "max_inference_batch_size")
DECODE_FIELDS = ("cuda_graphs", "compile_step")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """Tokenizer overrides, sampling settings, batch cap and device: shared by generate and evaluate."""
    p.add_argument("--text-tokenizer", default="", help="SentencePiece model (default: the one the checkpoint names)")
    p.add_argument("--image-tokenizer", default="", help="VQ-VAE directory (default: the one the checkpoint names)")
    add_flags(p, GenerationConfig, only=SAMPLING_FIELDS)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load", required=True, help="checkpoint directory written by training (or `cogview convert`)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt / image")
    add_sampling_flags(p)
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights and compute: fp32, or bf16/fp16 "
                   "(half the memory; fp16 is for GPUs)")
    add_flags(p, GenerationConfig, only=DECODE_FIELDS)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate` with its tasks."""
    gen = subparsers.add_parser("generate", help="generate images from text (or text from images) with a checkpoint")
    tasks = gen.add_subparsers(dest="task", metavar="TASK", required=True)
    t2i = tasks.add_parser("text2image", help="images for prompts: a PNG per sample, a grid per prompt, JSONL")
    _common(t2i)
    src = t2i.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="file with one prompt per line (optionally `id<TAB>text`)")
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    t2i.add_argument("--out", default="samples", help="output folder")
    t2i.add_argument("--caption-model", default="", help="post-selection: rerank samples by CapLoss under this "
                     "image-to-text checkpoint (best first)")
    t2i.add_argument("--keep", type=int, default=0, help="with --caption-model, write only the best k per prompt")
    sr_command.add_chain_flags(t2i)
    t2i.set_defaults(func=run_text2image)
    i2t = tasks.add_parser("image2text", help="captions for images (a model fine-tuned on image-then-text)")
    _common(i2t)
    i2t.add_argument("images", nargs="+", help="image files")
    i2t.add_argument("--max-len", type=int, default=32, help="max caption tokens")
    i2t.set_defaults(func=run_image2text)
    sr_command.register(tasks, _common)


DTYPES = ("fp32", "bf16", "fp16")


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _device(name: str) -> Any:
    import torch

    from megatron_cogview.parallel.state import default_device

    if name == "auto":
        return default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def load_for_generation(args: argparse.Namespace, load: str):
    """(model, unified tokenizer) of a checkpoint, checking the tokenizers against what it was trained with."""
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.parallel import ParallelState
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer
    from tokenization.unified import UnifiedTokenizer

    device = _device(args.device)
    model, meta = load_model(load, ParallelState.single(), device=device, dtype=_dtype(getattr(args, "dtype", "fp32")))
    rec = meta.tokenizers
    text_path = args.text_tokenizer or rec.get("text", "")
    image_path = args.image_tokenizer or rec.get("image", "")
    if not text_path or not image_path:
        raise ConfigError(f"checkpoint {load!r} does not name its tokenizers; pass --text-tokenizer and --image-tokenizer")
    text, image = TextTokenizer(text_path), ImageTokenizer.from_pretrained(image_path, device=device)
    for kind, tok, key in (("text", text, "text_fingerprint"), ("image", image, "image_fingerprint")):
        if key in rec and tok.fingerprint() != rec[key]:
            raise ConfigError(f"the {kind} tokenizer {text_path if kind == 'text' else image_path!r} is not the one "
                              f"checkpoint {load!r} was trained with; pass the matching --{kind}-tokenizer")
    grid = rec.get("image_grid")
    if isinstance(grid, int) and grid != image.grid_size:  # e.g. fine-tuned onto a bigger grid than the VQ-VAE's
        image = image.at_grid(grid)
    layout = TokenLayout.from_dict(rec["layout"]) if "layout" in rec else TokenLayout(image.num_codes, text.vocab_size)
    return model, UnifiedTokenizer(text, image, layout)


def _gen_config(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(**flag_values(GenerationConfig, args, SAMPLING_FIELDS + DECODE_FIELDS))


def run_text2image(args: argparse.Namespace) -> int:
    """Generate images for prompts; exit 0 even when some prompt lines were bad (they are reported)."""
    from megatron_cogview.tasks.text_to_image import generate_images, generate_images_from_file

    config = _gen_config(args)
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples} must be >= 1")
    model, tok = load_for_generation(args, args.load)
    caption = load_for_generation(args, args.caption_model)[0] if args.caption_model else None
    sr = sr_command.prepare_chain(args, tok)  # checked before the (long) sampling
    kw = dict(caption_model=caption, keep=args.keep or None, keep_codes=sr is not None)
    if args.prompts:
        records = generate_images_from_file(model, tok, args.prompts, args.num_samples, config, args.out, **kw)
    else:
        records = generate_images(model, tok, args.prompt, args.num_samples, config, args.out, **kw)
    good = [r for r in records if "error" not in r]
    print(f"wrote {len(good)} images for {len({r['id'] for r in good})} prompts to {args.out}/ "
          f"(samples.jsonl, <id>/grid.png); {len(records) - len(good)} prompt(s) skipped", file=sys.stderr)
    if sr is not None:
        done = sr_command.chain_text2image(args, records, sr)
        print(f"wrote {done} super-resolution images (<id>/<sample>.x2.png, superres.jsonl)", file=sys.stderr)
    return 0


def run_image2text(args: argparse.Namespace) -> int:
    """Caption images; prints one JSON line per image."""
    from PIL import Image, UnidentifiedImageError

    from megatron_cogview.tasks.captioning import caption_images

    model, tok = load_for_generation(args, args.load)
    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ConfigError(f"cannot read image {path!r}: {e}") from None
    captions = caption_images(model, tok, images, _gen_config(args), max_text_len=args.max_len,
                              num_samples=args.num_samples)
    for path, caps in zip(args.images, captions):
        print(json.dumps({"image": str(Path(path)), "captions": caps}, ensure_ascii=False))
    return 0
