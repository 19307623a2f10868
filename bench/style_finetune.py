"""Style fine-tuning at demo scale: teach a finished `cogview demo` model a style it never saw.

    python bench/style_finetune.py --demo-out demo_out --out style_out [--num-images 1000 --iters 300]

0. needs a demo whose VQ-VAE can draw the style (`cogview demo --vq-style-fraction 0.2`: the tokenizer, never
   the transformer, saw renderings in the new styles); the round-trip fraction is reported, and below 50% the
   bench stops;
1. renders --num-images synthetic shapes in --style (outlined or striped; pretraining saw only filled shapes);
2. `cogview preprocess --style outlined --caption-template TEMPLATE` on them (caption-free style data);
3. `python -m finetune.style` from the demo's text-to-image checkpoint on the demo's shards mixed with the
   style shards (--data-weights 1,W);
4. before and after: --samples images for the style caption (fraction read as outlined by
   data_utils.checker.check_style) and --per-prompt images for each of --prompts ordinary training captions
   (colour/shape/position accuracy by check_image, and how many came out in the style);
5. writes OUT/report.json and OUT/before_after.png (style-caption grids, before left, after right).
Targets (issue): style fraction >= 90% after, ordinary accuracy down by at most 5 points.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-out", required=True, help="folder of a finished `cogview demo` run")
    p.add_argument("--out", required=True, help="working folder (data, checkpoint, samples, report)")
    p.add_argument("--style", default="striped", choices=("outlined", "striped"), help="the new style to teach")
    p.add_argument("--num-images", type=int, default=1000, help="outlined-style training images")
    p.add_argument("--template", default="{style}",
                   help="style caption template (the demo's text budget is its longest caption, about 7 pieces; "
                        "longer style captions are cut alike in training and prompting, and counted in the report)")
    p.add_argument("--iters", type=int, default=300, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning lr (the demo pre-trains at 2e-3)")
    p.add_argument("--style-weight", type=float, default=1.0, help="mixing weight of the style data (general: 1)")
    p.add_argument("--samples", type=int, default=32, help="images for the style caption")
    p.add_argument("--prompts", type=int, default=12, help="ordinary training captions to score")
    p.add_argument("--per-prompt", type=int, default=4, help="images per ordinary caption")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-seed", type=int, default=None,
                   help="seed of the scored samples only (default --seed): another draw from the same checkpoints")
    return p.parse_args()


def _generate(load: Path, tok: Any, prompts: list[tuple[str, str]], n: int, folder: Path, seed: int) -> list[dict]:
    """generate_images for (id, caption) prompts with a checkpoint; the records (file paths relative to folder)."""
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.generation import GenerationConfig
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.tasks.prompts import PromptLine
    from megatron_cogview.tasks.text_to_image import generate_images

    model, _ = load_model(load, ParallelState.single())
    lines = [PromptLine(pid, text, i + 1) for i, (pid, text) in enumerate(prompts)]
    config = GenerationConfig(temperature=0.9, top_k=20, seed=seed, max_inference_batch_size=64)
    if (folder / "samples.jsonl").exists():
        (folder / "samples.jsonl").unlink()
    return generate_images(model, tok, lines, n, config, folder, log=lambda m: None)


def _sample_seed(args: argparse.Namespace) -> int:
    return args.seed if args.sample_seed is None else args.sample_seed


def _score(load: Path, tok: Any, style_caption: str, ordinary: list[dict], args: argparse.Namespace,
           folder: Path) -> dict[str, Any]:
    """Style fraction for the style caption and attribute accuracy on ordinary captions, for one checkpoint."""
    from PIL import Image

    from data_utils.checker import check_image, check_style

    recs = _generate(load, tok, [("style", style_caption)], args.samples, folder / "style", _sample_seed(args))
    styles = [check_style(Image.open(folder / "style" / r["file"])) for r in recs if "error" not in r]
    prompts = [(f"p{i:03d}", it["caption"]) for i, it in enumerate(ordinary)]
    recs = _generate(load, tok, prompts, args.per_prompt, folder / "ordinary", _sample_seed(args))
    want = {f"p{i:03d}": (it["color"], it["shape"], it["position"]) for i, it in enumerate(ordinary)}
    correct, styled = [], []
    for r in recs:
        if "error" in r:
            continue
        image = Image.open(folder / "ordinary" / r["file"]).convert("RGB")
        got = check_image(image)
        correct.append((got.color, got.shape, got.position) == want[r["id"]])
        styled.append(check_style(image) == args.style)
    return {"style_fraction": sum(s == args.style for s in styles) / max(1, len(styles)), "style_samples": len(styles),
            "ordinary_accuracy": sum(correct) / max(1, len(correct)), "ordinary_samples": len(correct),
            "ordinary_style_fraction": sum(styled) / max(1, len(styled))}


def _vq_ceiling(vq: Any, synth: Path, style: str, n: int = 200) -> float:
    """Fraction of style training images still read as the style after the VQ-VAE round trip: the most the
    transformer can reach (a tokenizer that never saw the style cannot draw it)."""
    from PIL import Image

    from data_utils.checker import check_style

    files = sorted((synth / "images").glob("*.png"))[:n]
    decoded = vq.decode(vq.encode([Image.open(f).convert("RGB") for f in files]))
    return sum(check_style(im) == style for im in decoded) / max(1, len(decoded))


def main() -> int:
    """Run the five steps (see the module doc); prints the report."""
    from PIL import Image

    from data_utils.preprocess import PreprocessConfig, preprocess
    from data_utils.shards import Manifest
    from data_utils.styles import StyleCaptions
    from data_utils.synth import write_synth
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer
    from tokenization.unified import UnifiedTokenizer

    args = _parse()
    demo, out = Path(args.demo_out), Path(args.out)
    sp, vq = demo / "tokenizers" / "text.model", demo / "tokenizers" / "vqvae"
    general, before = demo / "data" / "shards" / "text2image", demo / "checkpoints" / "text2image"
    if not (general / "dataset.json").is_file() or not before.is_dir():
        print(f"style_finetune: error: {demo} is not a finished `cogview demo` folder", file=sys.stderr)
        return 2
    manifest = Manifest.load(str(general))
    image_size = json.loads((demo / "data" / "synth" / "splits.json").read_text())["image_size"]
    started = time.time()
    synth = out / "style_synth"
    if not (synth / "splits.json").exists():
        write_synth(str(synth), args.num_images, image_size, seed=args.seed + 1000, num_heldout=0, style=args.style)
    ceiling = _vq_ceiling(ImageTokenizer.from_pretrained(str(vq)), synth, args.style)
    if ceiling < 0.5:
        print(f"style_finetune: error: only {ceiling:.0%} of {args.style} images survive {demo}'s VQ-VAE round trip "
              f"(it never saw the style); run the demo with `cogview demo --vq-style-fraction 0.2`", file=sys.stderr)
        return 2
    styles = StyleCaptions(args.template, style=args.style)
    shards = out / "shards"
    pre = preprocess(PreprocessConfig((str(synth / "images"),), str(sp), str(vq), str(shards), seq_len=manifest.seq_len,
                                      samples_per_shard=1000, batch_size=256, styles=styles), log=print)
    cut = pre.stats.get("truncated", 0)
    ckpt = out / "checkpoint"
    cmd = [sys.executable, "-m", "finetune.style", "--preset", "demo", "--max-position-embeddings",
           str(manifest.seq_len - 1), "--finetune-from", str(before), "--train-data", f"{general},{shards}",
           "--data-weights", f"1,{args.style_weight}", "--train-iters", str(args.iters), "--lr", str(args.lr),
           "--micro-batch-size", "64", "--warmup", "0.05", "--txt-loss-scale", "1", "--seed", str(args.seed),
           "--log-interval", str(max(1, args.iters // 5)), "--save", str(ckpt), "--load", str(ckpt),
           "--save-interval", str(args.iters), "--text-tokenizer", str(sp), "--image-tokenizer", str(vq)]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    tok = UnifiedTokenizer(TextTokenizer(str(sp)), ImageTokenizer.from_pretrained(str(vq)),
                           TokenLayout.from_dict(manifest.layout))
    seen: dict[str, dict] = {}
    for line in (demo / "data" / "synth" / "captions.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        seen.setdefault(rec["caption"], rec)
    ordinary = list(seen.values())[: args.prompts]
    caption = styles.caption(args.style)
    report = {"style_caption": caption, "style_caption_truncated_in": cut, "settings": vars(args),
              "vq_roundtrip_style_fraction": ceiling,
              "before": _score(before, tok, caption, ordinary, args, out / "samples" / "before"),
              "after": _score(ckpt, tok, caption, ordinary, args, out / "samples" / "after")}
    report["ordinary_accuracy_drop_points"] = 100 * (report["before"]["ordinary_accuracy"]
                                                     - report["after"]["ordinary_accuracy"])
    report["seconds"] = round(time.time() - started, 1)
    grids = [Image.open(out / "samples" / w / "style" / "style" / "grid.png") for w in ("before", "after")]
    both = Image.new("RGB", (grids[0].width + grids[1].width + 8, max(g.height for g in grids)), (255, 255, 255))
    both.paste(grids[0], (0, 0))
    both.paste(grids[1], (grids[0].width + 8, 0))
    both.save(out / "before_after.png")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
