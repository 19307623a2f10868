"""Demo super-resolution (`cogview demo --super-resolution`): fine-tune the demo's text-to-image model on
16 px -> 32 px crops (4x4 -> 8x8 codes) of the demo's scenes rendered at 64 px, magnify 32 px images to 64 px
(8x8 -> 16x16 codes) with the sliding windows, and score: the checker reads the magnified image as it reads
the source, and PSNR against a true 64 px rendering of the same scene next to bicubic upsampling. Writes
report/superres.{md,png,json}.

The training pairs are crops because every magnify window is one: a quarter of the scene at twice the
pixels, shapes cut at its edges; whole 16 px -> 32 px scenes alone taught the model scenes that no window
shows (shapes came out duplicated and scattered). A crop's codes are the window of the whole scene's code grids
that a magnify window reads and writes (preprocess --crop), not a crop encoded on its own: with the demo's VQ-VAE
43% of those cells differ, so the model had learnt from inputs it never meets at inference.

Stages run after the main demo and are skipped on re-runs like the others (their markers cover every
main-demo setting, SR_RECIPE and the SR settings up to that stage)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

Log = Callable[[str], None]
# settings read by SR stage 1, 2, 3
SR_FIELDS = (("sr_crops_per_image",), ("sr_iters", "sr_lr"), ("sr_eval_per_prompt", "sr_eval_scenes", "sr_temperature"))
ROUND_TRIP_SCENES = 512  # true 2x renderings read after a VQ-VAE round trip (the tokenizer's ceiling at 2x)
CLEAR_MARGIN = 0.05  # fill distance from the checker's shape thresholds of a "clearly read" source
SR_RECIPE = "code-windows-of-2x-scenes"  # how stage 1 makes the training pairs; a new recipe re-runs every SR stage


def _fingerprint(settings: Any, upto: int) -> str:
    values = dataclasses.asdict(settings)
    keep = {k: v for k, v in values.items() if not k.startswith("sr_") and k != "super_resolution"}
    keep.update({f: values[f] for group in SR_FIELDS[:upto] for f in group})
    keep["sr_recipe"] = SR_RECIPE
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _stage(out: Path, settings: Any, index: int, name: str, fn: Callable[[], Any], outputs: tuple[Path, ...],
           log: Log) -> None:
    """Run `fn` once per settings (marker under stages/), deleting stale outputs first."""
    mark = out / "stages" / f"sr-{index}.json"
    fp = _fingerprint(settings, index)
    if mark.is_file() and json.loads(mark.read_text()).get("fingerprint") == fp:
        log(f"[sr {index}/3] {name}: done before, skipped")
        return
    for path in outputs:
        shutil.rmtree(path, ignore_errors=True)
    log(f"[sr {index}/3] {name} ...")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"fingerprint": fp, "seconds": round(seconds, 1), "name": name}))
    log(f"[sr {index}/3] {name}: {seconds:.0f} s")


def sr_seq_len(out: Path, settings: Any) -> int:
    """Stored length of a demo SR sequence: the longest caption + 4x4 + 8x8 codes + the commands ([EOI2] the label)."""
    from megatron_cogview.demo.pipeline import _text_budget
    from tokenization.templates import SUPER_RESOLUTION

    synth = out / "data" / "synth"
    caps = [json.loads(x)["caption"] for f in ("captions.jsonl", "heldout.jsonl")
            for x in (synth / f).read_text().splitlines()]
    grid = settings.image_size // settings.vq_downsample
    codes = grid * grid + (grid // 2) ** 2
    return SUPER_RESOLUTION.length(_text_budget(str(out / "tokenizers" / "text.model"), caps), codes)


def run_superres(out: Path, settings: Any, log: Log, pretrain: Callable[..., None]) -> dict[str, Any]:
    """The three SR stages; returns the SR metrics (also in report/superres.json)."""
    s = settings
    shards, ckpt, tok = out / "data" / "shards" / "superres", out / "checkpoints", out / "tokenizers"
    scenes_2x = out / "data" / "synth-2x"

    def do_shards() -> None:
        from data_utils.preprocess import PreprocessConfig, preprocess
        from data_utils.synth import write_synth

        # the main demo's scenes (same seed: same captions, same held-out split) at twice the pixels, cropped to
        # one window's output: low = a 4x4 window of the 32 px downsample's codes, high = the 8x8 window above it
        summary = write_synth(str(scenes_2x), s.num_images, 2 * s.image_size, s.seed)
        log(f"    {summary.num_train} training scenes rendered at {2 * s.image_size} px")
        preprocess(PreprocessConfig(inputs=(str(scenes_2x / "captions.jsonl"),),
                                    text_tokenizer=str(tok / "text.model"), image_tokenizer=str(tok / "vqvae"),
                                    out=str(shards), seq_len=sr_seq_len(out, s), task="superres",
                                    image_size=2 * s.image_size, crop=s.image_size, crop_seed=s.seed,
                                    crops_per_image=s.sr_crops_per_image,
                                    samples_per_shard=2000, batch_size=256), log=lambda m: log("    " + m))

    def do_finetune() -> None:
        from megatron_cogview.checkpoint.layout import read_meta

        positions = read_meta(ckpt / "text2image")[1].model["max_position_embeddings"]
        args = ["--preset", "demo", "--max-position-embeddings", str(positions), "--train-data", str(shards),
                "--train-iters", str(s.sr_iters), "--micro-batch-size", str(s.batch_size), "--lr", str(s.sr_lr),
                "--warmup", "0.05", "--seed", str(s.seed), "--log-interval", str(max(1, s.sr_iters // 5)),
                "--save", str(ckpt / "superres"), "--load", str(ckpt / "superres"),
                "--save-interval", str(s.sr_iters), "--finetune-from", str(ckpt / "text2image"),
                "--text-tokenizer", str(tok / "text.model"), "--image-tokenizer", str(tok / "vqvae"),
                "--precision", s.precision]
        pretrain(args, out / "logs" / "superres.log", log, module="megatron_cogview.finetune.super_resolution")

    _stage(out, s, 1, "super-resolution shards (16 px -> 32 px crops of 64 px scenes)", do_shards,
           (scenes_2x, shards), log)
    _stage(out, s, 2, "fine-tune super-resolution from CogView", do_finetune, (ckpt / "superres",), log)
    _stage(out, s, 3, "magnify 32 px -> 64 px + score", lambda: evaluate_superres(out, s, log),
           (out / "samples" / "superres",), log)
    return json.loads((out / "report" / "superres.json").read_text())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


def evaluate_superres(out: Path, settings: Any, log: Log) -> dict[str, Any]:
    """Magnify generated samples (checker agreement) and rendered scenes (PSNR vs truth and vs bicubic)."""
    from PIL import Image

    from data_utils.checker import check_image
    from data_utils.synth import combination_for_caption, iter_samples, render
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.evaluation.round_trip import round_trip_reading
    from megatron_cogview.generation import GenerationConfig
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.tasks.super_resolution import SRModel, magnify_codes, sr_grid
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer
    from tokenization.unified import UnifiedTokenizer

    model, meta = load_model(out / "checkpoints" / "superres", ParallelState.single())
    vq = ImageTokenizer.from_pretrained(str(out / "tokenizers" / "vqvae"))
    tok = UnifiedTokenizer(TextTokenizer(str(out / "tokenizers" / "text.model")), vq,
                           TokenLayout.from_dict(meta.tokenizers["layout"]))
    sr = SRModel(model, tok, sr_grid(meta.tokenizers, vq.downsample, "superres"))
    config = GenerationConfig(temperature=settings.sr_temperature, top_k=settings.top_k, seed=settings.seed,
                              max_inference_batch_size=64)
    folder = out / "samples" / "superres"
    folder.mkdir(parents=True, exist_ok=True)
    size = settings.image_size

    # 1) the best generated samples of every prompt of the main demo (held-out and seen captions)
    sources, texts = [], []
    for group in ("heldout", "seen"):
        for line in (out / "samples" / group / "samples.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "error" not in rec and rec.get("rank", rec.get("sample")) < settings.sr_eval_per_prompt:
                sources.append(Image.open(out / "samples" / group / rec["file"]).convert("RGB"))
                texts.append(rec["prompt"])
    # 2) rendered scenes never used in training, with a true rendering at twice the pixels
    scenes = list(iter_samples(settings.sr_eval_scenes, settings.seed, start=settings.num_images + 10_000))
    small = [render(sc, size) for sc in scenes]
    truth = [render(sc, 2 * size) for sc in scenes]
    images = sources + small
    codes = vq.encode(images, image_size=size)
    seeds = [settings.seed * 100_003 + i for i in range(len(images))]
    high = magnify_codes(sr, texts + [sc.caption() for sc in scenes], codes, config, seeds, log)
    big = vq.decode(high)  # 2x the pixels
    read = [check_image(a) for a in sources]
    read_big = [check_image(b) for b in big[: len(sources)]]
    agree = [b.combination == r.combination for r, b in zip(read, read_big)]
    # references: bicubic 2x of the source under the same checker, and the sources whose reading is clear (fill
    # at least CLEAR_MARGIN from a shape threshold: nearer ones flip with a few pixels, whatever upsamples them)
    bicubic_agree = [check_image(a.resize((2 * size, 2 * size), Image.BICUBIC)).combination == r.combination
                     for a, r in zip(sources, read)]
    clear = [ok for ok, r in zip(agree, read) if r.shape_margin >= CLEAR_MARGIN]
    # magnification is conditioned on the caption too: split the sources by whether the checker reads them as their
    # caption. On those that match it, agreement = the caption kept; on the others, how often the magnified image
    # reads as the caption instead (a change the source-agreement figure counts as a miss).
    wanted = [combination_for_caption(t) for t in texts]
    on_caption = [r.combination == w for r, w in zip(read, wanted)]
    kept = [ok for ok, on in zip(agree, on_caption) if on]
    bicubic_kept = [ok for ok, on in zip(bicubic_agree, on_caption) if on]
    to_caption = [b.combination == w for b, w, on in zip(read_big, wanted, on_caption) if not on]
    ours, bicubic, recon = [], [], []
    decoded_small = vq.decode(codes[len(sources):])
    for i, (lo, hi, t) in enumerate(zip(small, big[len(sources):], truth)):
        t_arr = np.asarray(t)
        ours.append(psnr(np.asarray(hi), t_arr))
        bicubic.append(psnr(np.asarray(lo.resize(t.size, Image.BICUBIC)), t_arr))
        recon.append(psnr(np.asarray(decoded_small[i].resize(t.size, Image.BICUBIC)), t_arr))
    for i, im in enumerate(big):
        im.save(folder / f"{i:03d}.x2.png")
    scene_ok = [check_image(b).combination == sc.combination for b, sc in zip(big[len(sources):], scenes)]
    # 3) the tokenizer's ceiling at the magnified size: true 2x renderings of new scenes through encode -> decode
    rt_scenes = list(iter_samples(ROUND_TRIP_SCENES, settings.seed, start=settings.num_images + 20_000))
    round_trip = round_trip_reading(vq, [render(sc, 2 * size) for sc in rt_scenes], [sc.combination for sc in rt_scenes],
                                    lambda im: check_image(im).combination, image_size=2 * size)
    result = {
        "generated_magnified": len(sources), "checker_agreement": float(np.mean(agree)) if agree else 0.0,
        "bicubic_checker_agreement": float(np.mean(bicubic_agree)) if agree else 0.0,
        "clear_sources": len(clear), "clear_checker_agreement": float(np.mean(clear)) if clear else 0.0,
        "on_caption_sources": len(kept), "on_caption_kept": float(np.mean(kept)) if kept else 0.0,
        "bicubic_on_caption_kept": float(np.mean(bicubic_kept)) if kept else 0.0,
        "off_caption_sources": len(to_caption),
        "off_caption_moved_to_caption": float(np.mean(to_caption)) if to_caption else 0.0,
        "scenes": len(scenes), "scene_checker_accuracy": float(np.mean(scene_ok)),
        "psnr_ours_db": float(np.mean(ours)), "psnr_bicubic_db": float(np.mean(bicubic)),
        "psnr_vq_then_bicubic_db": float(np.mean(recon)), "round_trip_2x": round_trip,
        "grid": f"{sr.grid}x{sr.grid} -> {2 * sr.grid}x{2 * sr.grid}",
    }
    _write_report(out, result, small, big[len(sources):], truth, sources, big[: len(sources)])
    log(f"    magnified {len(sources)} generated samples: checker reads {100 * result['checker_agreement']:.1f}% the "
        f"same as the source (bicubic {100 * result['bicubic_checker_agreement']:.1f}%); scenes: PSNR "
        f"{result['psnr_ours_db']:.1f} dB (bicubic {result['psnr_bicubic_db']:.1f} dB)")
    return result


def _write_report(out: Path, result: dict[str, Any], small: list, big: list, truth: list, sources: list,
                  magnified: list) -> None:
    """report/superres.json, superres.md and superres.png (rows: source, bicubic, ours, truth)."""
    from PIL import Image

    from megatron_cogview.generation.super_resolution import DEFAULT_ORDER

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "superres.json").write_text(json.dumps(result, indent=1))
    side = truth[0].size[0]
    cols = min(8, len(small))
    sheet = Image.new("RGB", (cols * side, 4 * side + 2 * side), (255, 255, 255))
    for c in range(cols):
        rows = [small[c].resize((side, side), Image.NEAREST), small[c].resize((side, side), Image.BICUBIC),
                big[c], truth[c]]
        for r, im in enumerate(rows):
            sheet.paste(im, (c * side, r * side))
        if c < len(sources):
            sheet.paste(sources[c].resize((side, side), Image.NEAREST), (c * side, 4 * side))
            sheet.paste(magnified[c], (c * side, 5 * side))
    sheet.save(report / "superres.png")
    r = result
    (report / "superres.md").write_text("\n".join([
        "# Super-resolution (demo)",
        "",
        "CogView fine-tuned on 16 px -> 32 px crops (4x4 -> 8x8 codes) of scenes rendered at 64 px, then 32 px "
        f"images magnified to 64 px ({r['grid']} codes) with 9 overlapping windows in {DEFAULT_ORDER} order.",
        "",
        "| | value |",
        "|---|---|",
        f"| generated samples magnified | {r['generated_magnified']} |",
        f"| checker reads the magnified image as the source | {100 * r['checker_agreement']:.1f}% |",
        f"| the same for bicubic 2x upsampling of the source | {100 * r['bicubic_checker_agreement']:.1f}% |",
        f"| the same on the {r['clear_sources']} sources read clearly (fill >= {CLEAR_MARGIN} from a shape threshold) "
        f"| {100 * r['clear_checker_agreement']:.1f}% |",
        f"| sources the checker reads as their caption: magnified image still reads so (bicubic) | "
        f"{r['on_caption_sources']}: {100 * r['on_caption_kept']:.1f}% ({100 * r['bicubic_on_caption_kept']:.1f}%) |",
        f"| sources that differ from their caption: magnified image reads as the caption | "
        f"{r['off_caption_sources']}: {100 * r['off_caption_moved_to_caption']:.1f}% |",
        f"| true 64 px renderings through the VQ-VAE, checker right (the ceiling at 64 px) | "
        f"{r['round_trip_2x']['images']}: {100 * r['round_trip_2x']['accuracy']:.1f}% |",
        f"| rendered scenes magnified (checker right) | {r['scenes']} ({100 * r['scene_checker_accuracy']:.1f}%) |",
        f"| PSNR vs a true 64 px rendering: ours | {r['psnr_ours_db']:.2f} dB |",
        f"| PSNR: bicubic upsampling of the 32 px image | {r['psnr_bicubic_db']:.2f} dB |",
        f"| PSNR: VQ-VAE round trip at 32 px, then bicubic | {r['psnr_vq_then_bicubic_db']:.2f} dB |",
        "",
        "superres.png, per column: rows 1-4 a rendered scene (32 px source shown at 64, bicubic, ours, true 64 px);",
        "rows 5-6 a generated sample and its magnification.",
        "",
    ]))
