"""`cogview evaluate` as a library call: resumable batched generation, then scoring and the results files."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from data_utils.progress import progress
from megatron_cogview.config import ConfigError
from megatron_cogview.evaluation.references import References
from megatron_cogview.evaluation.report import write_outputs
from megatron_cogview.evaluation.scoring import Draw, Extractor, score
from megatron_cogview.generation import GenerationConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.tasks.prompts import PromptLine
from megatron_cogview.tasks.text_to_image import generate_images
from tokenization.unified import UnifiedTokenizer

Log = Callable[[str], None]


@dataclass(frozen=True)
class EvalSettings:
    """What is generated (samples per caption x rerank draws each) and how it is scored."""

    samples_per_caption: int = 1
    rerank: int = 1  # draws per kept sample; the lowest CapLoss of each group of `rerank` is kept
    radii: tuple[float, ...] = (0, 1, 2, 4, 8)
    seed: int = 1234
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_batch: int = 16

    @property
    def draws(self) -> int:
        """Images generated per caption."""
        return self.samples_per_caption * self.rerank


def _check(settings: EvalSettings, caption_model: CogViewModel | None) -> None:
    if settings.samples_per_caption < 1 or settings.rerank < 1:
        raise ConfigError("--samples-per-caption and --rerank must be >= 1")
    if settings.rerank > 1 and caption_model is None:
        raise ConfigError(f"--rerank {settings.rerank} needs --caption-model (reranking keeps the lowest Caption Loss)")
    if any(r < 0 for r in settings.radii):
        raise ConfigError(f"blur radii {settings.radii} must be >= 0")


def _fingerprint(settings: EvalSettings, captions: list[str], checkpoints: dict[str, str]) -> dict[str, Any]:
    """What the stored samples depend on; a re-run with anything else must not reuse them."""
    gen = {k: v for k, v in asdict(settings).items() if k not in ("radii", "max_batch")}
    digest = hashlib.sha256(json.dumps(captions, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"generation": gen, "captions_sha256": digest, "captions": len(captions), "checkpoints": checkpoints}


def _open_run(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> Path:
    """The samples folder; refuses to mix samples of different settings unless overwrite."""
    samples, meta = out / "samples", out / "run.json"
    if meta.is_file() and json.loads(meta.read_text()) != fingerprint:
        if not overwrite:
            raise ConfigError(f"{out} holds samples made with other settings (see {meta}); pass another --out, "
                              "or --overwrite to delete them")
        shutil.rmtree(samples, ignore_errors=True)
    elif not meta.is_file() and samples.exists():
        shutil.rmtree(samples)  # samples without their record of settings cannot be trusted
    out.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(fingerprint, indent=1))
    for stale in ("results.json", "results.md", "grid.png"):
        (out / stale).unlink(missing_ok=True)
    return samples


def _done(samples: Path, draws: int) -> dict[str, list[dict]]:
    """Records of captions whose every draw is on disk (a re-run continues after them)."""
    by_id: dict[str, dict[int, dict]] = {}
    jsonl = samples / "samples.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "error" not in rec and (samples / rec["file"]).is_file():
                by_id.setdefault(rec["id"], {})[int(rec["sample"])] = rec
    return {k: list(v.values()) for k, v in by_id.items() if len(v) == draws}


def generate(model: CogViewModel, tokenizer: UnifiedTokenizer, captions: list[str], settings: EvalSettings,
             samples: Path, caption_model: CogViewModel | None, log: Log) -> list[dict]:
    """Every draw of every caption (continuing a stopped run); PNGs and JSONL are written chunk by chunk."""
    config = GenerationConfig(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                              seed=settings.seed, max_inference_batch_size=settings.max_batch)
    lines = [PromptLine(f"c{i:05d}", c, i + 1) for i, c in enumerate(captions)]
    done = _done(samples, settings.draws)
    todo = [line for line in lines if line.id not in done]
    if done:
        log(f"continuing: {len(done)} of {len(lines)} captions already generated")
    per_call = max(1, settings.max_batch // settings.draws)
    with progress(len(lines), "generate", "caption") as bar:
        bar.update(len(lines) - len(todo))
        for start in range(0, len(todo), per_call):
            chunk = todo[start : start + per_call]
            for rec in generate_images(model, tokenizer, chunk, settings.draws, config, samples,
                                     caption_model=caption_model, log=log):
                if "error" in rec:
                    raise ConfigError(f"caption {rec['prompt']!r} cannot be generated: {rec['error']}")
                done.setdefault(rec["id"], []).append(rec)
            bar.update(len(chunk))
    return [r for line in lines for r in sorted(done[line.id], key=lambda r: r["sample"])]


def draws_from_records(records: list[dict], folder: Path, captions: list[str]) -> list[Draw]:
    """Draw objects of generate_images records (caption index from the prompt text)."""
    index = {c: i for i, c in enumerate(captions)}
    return [Draw(index[r["prompt"]], int(r["sample"]), folder / r["file"], r.get("caption_loss")) for r in records]


def evaluate(model: CogViewModel, tokenizer: UnifiedTokenizer, refs: References, settings: EvalSettings,
             out: str | Path, *, extractor: Extractor | None, caption_model: CogViewModel | None = None,
             checkpoints: dict[str, str] | None = None, features: str = "none", overwrite: bool = False,
             log: Log = print) -> dict[str, Any]:
    """Generate, score and write results.json, results.md and grid.png into `out`; return the results."""
    from data_utils.checker import check_image

    _check(settings, caption_model)
    if extractor is not None and len(refs.captions) * settings.samples_per_caption < 2:
        raise ConfigError(f"FID needs at least 2 generated images but {len(refs.captions)} caption(s) x "
                          f"{settings.samples_per_caption} sample(s) make fewer; raise --samples-per-caption")
    out = Path(out)
    samples = _open_run(out, _fingerprint(settings, refs.captions, checkpoints or {}), overwrite)
    records = generate(model, tokenizer, refs.captions, settings, samples, caption_model, log)
    draws = draws_from_records(records, samples, refs.captions)
    rows = score(draws, settings.rerank, refs.images, extractor, settings.radii, refs.combinations,
                 lambda im: check_image(im).combination)
    results = {"rows": rows, "captions": len(refs.captions), "reference_images": int(refs.images.size(0)),
               "samples_per_caption": settings.samples_per_caption, "rerank": settings.rerank,
               "features": features, "settings": asdict(settings)}
    write_outputs(out, results, draws, refs.captions)
    return results
