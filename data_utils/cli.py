"""`cogview synth`, `cogview preprocess` and `cogview data-info`: the data subcommands."""
from __future__ import annotations

import argparse
import logging
import sys

from megatron_cogview.dataclass_flags import add_flags, flag_values

from .errors import DataError
from .preprocess_config import PreprocessConfig
from .synth import RENDER_STYLES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommands to the `cogview` parser."""
    _add_synth(subparsers)
    _add_preprocess(subparsers)
    _add_info(subparsers)
    _add_merge(subparsers)


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="write the built-in synthetic shapes dataset (images + captions + held-out split)",
        description="Deterministic captioned images of one coloured shape; some (colour, shape, position) "
        "combinations are held out of captions.jsonl and listed in splits.json / heldout.jsonl.",
    )
    p.add_argument("--out", required=True, help="output folder (images/, captions.jsonl, heldout.jsonl, splits.json)")
    p.add_argument("--num", type=int, default=30000, help="number of images (training + held-out)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (>= 16)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same dataset")
    p.add_argument("--lang", choices=("en", "zh"), default="en", help="language of the `caption` field")
    p.add_argument("--num-heldout", type=int, default=10, help="combinations kept out of training")
    p.add_argument("--shape-style", choices=RENDER_STYLES, default="filled",
                   help="how shapes are drawn (outlined, striped: new styles for fine-tuning demos)")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from .synth import write_synth

    summary = write_synth(args.out, args.num, args.image_size, args.seed, args.lang, args.num_heldout,
                          args.shape_style)
    print(f"synth: {summary.num_train} training and {summary.num_heldout} held-out images in {summary.out} "
          f"({len(summary.heldout)} held-out combinations)")
    return 0


def _add_preprocess(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess", help="tokenize (image, caption) pairs into webdataset token shards + dataset.json",
        description="Inputs: JSONL/TSV files of (image path, caption), folders of images with same-name .txt "
        "captions, or img2dataset-style .tar shards (KEY.jpg|png|webp + KEY.txt). Re-running continues "
        "an interrupted run.",
    )
    add_flags(p, PreprocessConfig, positional=("inputs",), nargs={"inputs": "*"})
    d = p.add_argument_group("several processes (torchrun / SLURM set RANK+WORLD_SIZE or SLURM_PROCID+SLURM_NTASKS)")
    d.add_argument("--num-parts", type=int, default=None, help="split the input files into this many parts ...")
    d.add_argument("--part", type=int, default=None, help="... and process this one (0-based; e.g. a SLURM array index)")
    st = p.add_argument_group("caption-free style data (inputs are image folders; captions come from the template)")
    st.add_argument("--style", default=None, help="one style for every input image, e.g. --style \"oil painting\"")
    st.add_argument("--style-from-folders", action="store_true",
                    help="each input folder holds one sub-folder per style; the sub-folder names the style "
                         "(underscores read as spaces)")
    st.add_argument("--caption-template", default=None,
                    help="caption of every image, with {style} (default \"An image of {style} style\")")
    b = p.add_argument_group("the original CogView's binary datasets (instead of inputs)")
    b.add_argument("--from-cogview-bin", nargs="+", metavar="FILE", default=None,
                   help="CompactBinaryDataset files: int32 rows of --bin-text-len text ids (-1 padded) + grid^2 codes")
    b.add_argument("--bin-text-len", type=int, default=64, help="text ids per row (the original used 64)")
    b.add_argument("--text-ids", choices=("unified", "raw"), default="unified",
                   help="text ids stored as unified ids (SentencePiece id + image codes, the original's) or raw")
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from .preprocess import preprocess

    if args.from_cogview_bin is not None:
        return _run_from_cogview_bin(args)
    from .parts import part_device, resolve_part

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    part = resolve_part(args.num_parts, args.part)
    flags = {**flag_values(PreprocessConfig, args), "inputs": tuple(args.inputs), "device": part_device(args.device, part)}
    config = PreprocessConfig(
        **flags, num_parts=part.count, part=part.index,
        wait_for_parts=part.launched and part.index == 0, styles=_styles(args),
    )
    preprocess(config)
    return 0


def _styles(args: argparse.Namespace):
    """The StyleCaptions the style flags ask for, or None (captions come from the inputs)."""
    from .styles import DEFAULT_TEMPLATE, StyleCaptions

    if args.style is None and not args.style_from_folders:
        if args.caption_template is not None:
            raise DataError("--caption-template needs --style NAME or --style-from-folders")
        return None
    if args.caption_column is not None or args.image_column is not None:
        raise DataError("--caption-column/--image-column do not apply to style data (captions come from the template)")
    return StyleCaptions(args.caption_template or DEFAULT_TEMPLATE, args.style, args.style_from_folders)


def _run_from_cogview_bin(args: argparse.Namespace) -> int:
    from .cogview_bin import BinConfig, convert_cogview_bin

    if args.inputs:
        raise DataError("pass either inputs or --from-cogview-bin FILE, not both")
    if args.num_parts is not None or args.part is not None:
        raise DataError("--num-parts/--part do not apply to --from-cogview-bin; convert each file in its own --out "
                        "and join them with `cogview data-merge`")
    ignored = [f for f, v in (("--image-size", args.image_size), ("--caption-column", args.caption_column),
                              ("--image-column", args.image_column), ("--num-text-tokens", args.num_text_tokens),
                              ("--num-image-tokens", args.num_image_tokens), ("--style", args.style),
                              ("--style-from-folders", args.style_from_folders or None),
                              ("--caption-template", args.caption_template), ("--crop", args.crop)) if v is not None]
    if ignored:
        raise DataError(f"{', '.join(ignored)} do not apply to --from-cogview-bin (the rows are already tokenized)")
    config = BinConfig(tuple(args.from_cogview_bin), args.text_tokenizer, args.image_tokenizer, args.out,
                       text_len=args.bin_text_len, text_ids=args.text_ids, seq_len=args.seq_len, task=args.task,
                       samples_per_shard=args.samples_per_shard, prefix=args.prefix)
    convert_cogview_bin(config)
    return 0


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data-info", help="summarise (and optionally verify) a preprocessed dataset")
    p.add_argument("dataset", help="folder with dataset.json, or its path or URL (pipe:CMD, http(s)://)")
    p.add_argument("--verify", action="store_true", help="read every shard and report corrupt or short ones")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .remote import iter_shard
    from .shards import Manifest, decode_sample
    from .wds import ShardReadError

    m = Manifest.load(args.dataset)
    print(f"{m.root}: {m.num_samples} samples in {len(m.shards)} shard(s), task {m.task}, seq_len {m.seq_len}, "
          f"dtype {m.dtype}")
    print(f"layout {m.layout} ({m.layout_fingerprint[:12]}); text tokenizer {m.text_tokenizer_fingerprint[:12]}; "
          f"image tokenizer {m.image_tokenizer_fingerprint[:12]}")
    if m.stats:
        print("stats " + ", ".join(f"{k}={v}" for k, v in m.stats.items()))
    if not args.verify:
        return 0
    problems = 0
    for shard, path in zip(m.shards, m.shard_paths()):
        seen = 0
        try:
            for raw in iter_shard(path):
                decode_sample(raw, m.seq_len)
                seen += 1
        except (ShardReadError, ValueError, OSError) as e:
            problems += 1
            print(f"BAD {shard.name}: {e}")
            continue
        if seen != shard.samples:
            problems += 1
            print(f"BAD {shard.name}: {seen} samples, manifest says {shard.samples}")
    if problems:
        raise DataError(f"{problems} shard(s) of {m.root} are damaged; re-run `cogview preprocess` into a new --out")
    print("all shards verified")
    return 0


def _add_merge(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data-merge", help="join preprocessed datasets (or the parts of a split run) into one dataset.json",
        description="With only OUT: write OUT/dataset.json from the finished parts in OUT/.parts (runs made with "
        "--num-parts/--part). With DATASET folders: list all their shards (relative to OUT) in OUT/dataset.json. "
        "--shard-urls names the shards by URL instead (after uploading them), e.g. "
        "'pipe:aws s3 cp s3://bucket/ds/data-{000000..000099}.tar -'.",
    )
    p.add_argument("out", help="folder for the joined dataset.json")
    p.add_argument("datasets", nargs="*", help="dataset folders or dataset.json files to join (default: OUT's parts)")
    p.add_argument("--shard-urls", default=None,
                   help="brace pattern of the shards' URLs (pipe:CMD, http(s)://), one per shard in joined order")
    p.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from .parts import merge

    merge(args.out, args.datasets, args.shard_urls, print)
    return 0
