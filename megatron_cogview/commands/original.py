"""`cogview convert --from cogview-original`: the metadata that makes an imported release usable directly.

Generation reads the tokenizers (paths, fingerprints, token layout), the task of the training data and
the image size from the checkpoint's metadata (`tokenizers`, where training records them too), so the
import records them: `--text-tokenizer cog-pretrain.model` (loaded as is), `--image-tokenizer DIR` (made
by `cogview tokenizer import-vqvae`; its image size is the one the model was trained at) and `--task`
(`superres` is what `--super-resolution` checks for). `extra.template = "cogview-original"` marks
models trained with the original's templates (its super-resolution sequence has a [POS0] after [ROI2]).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from megatron_cogview.config import ConfigError, ModelConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the original-import path."""
    g = p.add_argument_group("--from cogview-original")
    g.add_argument("--task", choices=("text2image", "image2text", "superres"), default=None,
                   help="what the released model does: text2image (cogview-base), image2text (cogview-caption, "
                        "post-selection) or superres (cogview-sr); default text2image")
    g.add_argument("--text-tokenizer", default="", metavar="FILE",
                   help="SentencePiece model to record (the release's cog-pretrain.model)")
    g.add_argument("--image-tokenizer", default="", metavar="DIR",
                   help="VQ-VAE directory to record (from `cogview tokenizer import-vqvae`)")


def check_arguments(args: argparse.Namespace) -> None:
    """These flags only mean something for the original import."""
    if args.fmt != "cogview-original":
        given = [f for f, v in (("--task", args.task), ("--text-tokenizer", args.text_tokenizer),
                                ("--image-tokenizer", args.image_tokenizer)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --from cogview-original (our checkpoints record them)")
    elif bool(args.text_tokenizer) != bool(args.image_tokenizer):
        raise ConfigError("pass both --text-tokenizer and --image-tokenizer (or neither)")


def tokenizer_record(text_path: str, image_path: str, config: ModelConfig, num_tokens: int | None) -> dict[str, Any]:
    """Paths, fingerprints and the unified layout of the release's tokenizers, checked against the vocabulary."""
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer

    text, image = TextTokenizer(text_path), ImageTokenizer.from_pretrained(image_path)
    layout = TokenLayout(num_image_tokens=image.num_codes, num_text_tokens=text.vocab_size)
    if num_tokens is not None and num_tokens != layout.num_tokens:
        raise ConfigError(f"--num-tokens {num_tokens} disagrees with the tokenizers ({image.num_codes} image codes + "
                          f"{text.vocab_size} text pieces + commands = {layout.num_tokens}); drop --num-tokens")
    if layout.num_tokens > config.vocab_size:
        raise ConfigError(f"the tokenizers need {layout.num_tokens} ids but the checkpoint's vocabulary has "
                          f"{config.vocab_size} rows; are these the tokenizers this model was trained with?")
    return {
        "image_size": image.image_size, "text": os.path.abspath(text_path), "image": os.path.abspath(image_path),
        "text_fingerprint": text.fingerprint(), "image_fingerprint": image.fingerprint(),
        "layout": layout.to_dict(), "layout_fingerprint": layout.fingerprint(), "num_tokens": layout.num_tokens,
    }


def import_metadata(args: argparse.Namespace, config: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizers, extra) to record in the imported checkpoint's metadata."""
    tokenizers: dict[str, Any] = {"task": args.task or "text2image"}
    if args.text_tokenizer:
        tokenizers.update(tokenizer_record(args.text_tokenizer, args.image_tokenizer, config, args.num_tokens))
    return tokenizers, {"template": "cogview-original"}
