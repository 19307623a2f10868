"""Demo evaluation: sample images for held-out (and some seen) captions, rerank by CapLoss, score with the checker."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from PIL import Image

Log = Callable[[str], None]


def _prompts(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """Unique captions of a synth JSONL file with their attributes (first occurrence wins)."""
    seen: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        seen.setdefault(rec["caption"], rec)
    items = list(seen.values())
    return items if limit is None else items[:limit]


def evaluate(out: Path, settings: Any, log: Log) -> dict[str, Any]:
    """Generate samples_per_prompt images per caption, write PNGs/grids, and score them (writes scores.json)."""
    from data_utils.checker import check_image
    from data_utils.shards import Manifest
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.generation import GenerationConfig
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.tasks.prompts import PromptLine
    from megatron_cogview.tasks.text_to_image import generate_images
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer
    from tokenization.unified import UnifiedTokenizer

    state = ParallelState.single()
    model, _ = load_model(out / "checkpoints" / "text2image", state)
    caption_model, _ = load_model(out / "checkpoints" / "image2text", state)
    layout = TokenLayout.from_dict(Manifest.load(str(out / "data" / "shards" / "text2image")).layout)
    tok = UnifiedTokenizer(TextTokenizer(str(out / "tokenizers" / "text.model")),
                           ImageTokenizer.from_pretrained(str(out / "tokenizers" / "vqvae")), layout)
    config = GenerationConfig(temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed,
                              max_inference_batch_size=64)
    synth = out / "data" / "synth"
    groups = {"heldout": _prompts(synth / "heldout.jsonl", None),
              "seen": _prompts(synth / "captions.jsonl", settings.prompts_seen)}
    results: dict[str, Any] = {}
    for group, items in groups.items():
        lines = [PromptLine(f"{group}-{i:03d}", it["caption"], i + 1) for i, it in enumerate(items)]
        folder = out / "samples" / group
        if (folder / "samples.jsonl").exists():
            (folder / "samples.jsonl").unlink()  # a re-run of this stage starts its records afresh
        records = generate_images(model, tok, lines, settings.samples_per_prompt, config, folder,
                                caption_model=caption_model, log=lambda m: log("    " + m))
        expected = {line.id: (it["color"], it["shape"], it["position"]) for line, it in zip(lines, items)}
        per_prompt: dict[str, dict[str, Any]] = {}
        for r in records:
            if "error" in r:
                continue
            got = check_image(Image.open(folder / r["file"]).convert("RGB"))
            want = expected[r["id"]]
            ok = (got.color, got.shape, got.position) == want
            p = per_prompt.setdefault(r["id"], {"prompt": r["prompt"], "expected": list(want), "correct": [],
                                                "best_correct": None, "grid": r["grid"]})
            p["correct"].append(ok)
            if r.get("rank") == 0:
                p["best_correct"] = ok
        n_prompts = max(1, len(per_prompt))
        one = sum(sum(p["correct"]) / len(p["correct"]) for p in per_prompt.values()) / n_prompts
        best = sum(bool(p["best_correct"]) for p in per_prompt.values()) / n_prompts
        results[group] = {"prompts": len(per_prompt), "samples_per_prompt": settings.samples_per_prompt,
                          "accuracy_one_sample": one, "accuracy_post_selection": best, "per_prompt": per_prompt}
        log(f"    {group}: all-three-attributes accuracy {100 * one:.1f}% with one sample, "
            f"{100 * best:.1f}% with post-selection (best of {settings.samples_per_prompt} by CapLoss)")
    (out / "samples" / "scores.json").write_text(json.dumps(results, indent=1))
    return results
