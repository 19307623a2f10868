"""Demo stage: shapes-FID of held-out samples vs held-out real images, Caption Loss, checker accuracy with 95%
CIs, one-sample and reranked (best of each group of `rerank_group` draws), from the samples already generated."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

Log = Callable[[str], None]
RADII = (0, 1, 2, 4, 8)
ROUND_TRIP_IMAGES = 2000  # held-out real images read after a VQ-VAE round trip (the tokenizer's ceiling)


def demo_metrics(out: Path, settings: Any, log: Log) -> dict[str, Any]:
    """Score samples/<group>/samples.jsonl; writes eval/demo_metrics.json and returns it."""
    from data_utils.checker import check_image
    from megatron_cogview.evaluation.references import read_references, synthetic_combination
    from megatron_cogview.evaluation.run import draws_from_records
    from megatron_cogview.evaluation.scoring import score
    from megatron_cogview.evaluation.shapes import shapes_net

    synth = out / "data" / "synth"
    net = shapes_net(out / "eval" / "shapes_extractor.safetensors", settings.image_size, log=lambda m: log("    " + m))
    real = read_references([str(synth / "heldout.jsonl")], settings.image_size, max_references=4000).images
    results: dict[str, Any] = {"rerank_group": settings.rerank_group, "reference_images": int(real.size(0))}
    for group in ("heldout", "seen"):
        folder = out / "samples" / group
        records = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
        records = [r for r in records if "error" not in r]
        captions = list(dict.fromkeys(r["prompt"] for r in records))
        combos = [synthetic_combination(c) for c in captions]
        rows = score(draws_from_records(records, folder, captions), settings.rerank_group, real,
                     net if group == "heldout" else None, RADII, combos,
                     lambda im: check_image(im).combination)
        results[group] = {"captions": len(captions), "draws_per_caption": settings.samples_per_prompt, "rows": rows}
        one, best = rows["one_sample"], rows.get("reranked", rows["one_sample"])
        fid = f"shapes FID {one['fid_0']:.2f} -> {best['fid_0']:.2f}, " if "fid_0" in one else ""
        log(f"    {group}: {fid}CapLoss {one.get('caption_loss', float('nan')):.3f} -> "
            f"{best.get('caption_loss', float('nan')):.3f}, accuracy {100 * one['accuracy']:.1f}% "
            f"[{100 * one['accuracy_ci95'][0]:.0f}-{100 * one['accuracy_ci95'][1]:.0f}] -> {100 * best['accuracy']:.1f}% "
            f"[{100 * best['accuracy_ci95'][0]:.0f}-{100 * best['accuracy_ci95'][1]:.0f}] (one sample -> best of "
            f"{settings.rerank_group} by CapLoss)")
    results["tokenizer_round_trip"] = _tokenizer_round_trip(out, lambda im: check_image(im).combination)
    rt = results["tokenizer_round_trip"]
    log(f"    VQ-VAE round trip of {rt['images']} held-out real images: checker right on {100 * rt['accuracy']:.1f}% "
        "(the most a generated image can score through this tokenizer)")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "demo_metrics.json").write_text(json.dumps(results, indent=1))
    return results


def _tokenizer_round_trip(out: Path, read: Callable[[Any], Any]) -> dict[str, Any]:
    """Checker accuracy on the first ROUND_TRIP_IMAGES held-out real images after encode -> decode."""
    from PIL import Image

    from megatron_cogview.evaluation.round_trip import round_trip_reading
    from tokenization.image import ImageTokenizer

    synth = out / "data" / "synth"
    records = [json.loads(x) for x in (synth / "heldout.jsonl").read_text().splitlines()][:ROUND_TRIP_IMAGES]
    images = [Image.open(synth / r["image"]).convert("RGB") for r in records]
    expected = [(r["color"], r["shape"], r["position"]) for r in records]
    return round_trip_reading(ImageTokenizer.from_pretrained(str(out / "tokenizers" / "vqvae")), images, expected, read)


def metrics_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: per caption group, one-sample and reranked accuracy (95% CI), CapLoss and shapes FID-k."""
    r = results["rerank_group"]
    lines = ["| captions | draws | | accuracy [95% CI] | CapLoss | " + " | ".join(f"FID-{k}" for k in RADII) + " |",
             "|---" * (5 + len(RADII)) + "|"]
    names = {"heldout": "held-out combinations", "seen": "seen in training"}
    for group in ("heldout", "seen"):
        g = results[group]
        for key, label in (("one_sample", "one sample"), ("reranked", f"best of {r} by CapLoss")):
            row = g["rows"].get(key)
            if row is None:
                continue
            lo, hi = row["accuracy_ci95"]
            fids = " | ".join(f"{row[f'fid_{k}']:.2f}" if f"fid_{k}" in row else "-" for k in RADII)
            cap = f"{row['caption_loss']:.3f}" if "caption_loss" in row else "-"
            lines.append(f"| {names[group]}: {g['captions']} | {row['trials']} | {label} | "
                         f"{100 * row['accuracy']:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}] | {cap} | {fids} |")
    rt = results.get("tokenizer_round_trip")
    if rt is not None:  # runs from before this row was measured have none
        lo, hi = rt["accuracy_ci95"]
        lines.append(f"| held-out real images through the VQ-VAE (the ceiling) | {rt['images']} | encode -> decode | "
                     f"{100 * rt['accuracy']:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}] | - |" + " - |" * len(RADII))
    return lines
