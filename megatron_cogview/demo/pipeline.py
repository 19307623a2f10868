"""The laptop demo, stage by stage: synthetic data -> tokenizers -> shards -> CogView + caption model ->
images for held-out captions -> attribute-checker scores -> report/. Completed stages are skipped on re-runs."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from megatron_cogview.allocator import loaded_allocator, with_tcmalloc

Log = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every stage (the defaults are the full CPU demo: ~10 minutes on 2 cores with bf16 instructions;
    see FAST for the smoke run)."""

    seed: int = 0
    # 60,000 scenes, 3,000 steps and dropout 0.1 (bf16): held-out one-sample mean over six sampling seeds 97.2%,
    # where 30,000 / 2,000 / no dropout gave 94.3% (2026-12-02, bench/results/demo_cpu.json "recipe_sweep")
    num_images: int = 60000
    image_size: int = 32
    text_vocab: int = 96
    vq_steps: int = 3500
    vq_hidden: int = 64
    vq_codes: int = 256
    vq_code_dim: int = 32
    vq_downsample: int = 4  # 32 px -> 8x8 codes
    vq_batch: int = 64
    # Renderings per scene in the new styles (synth.NEW_STYLES, split evenly) added to the VQ-VAE's training images
    # (never to the transformer's): a tokenizer that saw only filled shapes cannot draw them (2 in 10 outlined
    # images survive its round trip), so bench/style_finetune.py needs a demo run with this > 0
    # (`cogview demo --vq-style-fraction 0.2`). Off by default: the tokenizer then spends codes on styles the
    # main demo never draws.
    vq_style_fraction: float = 0.0
    # Scenes rendered at 2x the pixels (64 px) per training scene, added to the VQ-VAE's images and read as random
    # 32 px windows (train-vqvae --random-crop): a tokenizer trained on 32 px scenes alone drew true 64 px scenes
    # back right only 96.2% of the time (2,048 scenes; squares 94.7%), which capped super-resolution; with 0.25,
    # 100.0%, and 32 px PSNR 35.5 dB instead of 35.0 (2026-12-02, bench/results/demo_superres_cpu.json "vq_2x")
    vq_2x_fraction: float = 0.25
    gpt_iters: int = 3000
    # hidden and attention dropout of pre-training and of the caption model (the SR fine-tune uses none); in the
    # caption model it made post-selection robust: best of 16 over six sampling seeds, held-out 98.3% -> 100%,
    # seen 97.8% -> 98.9% (2026-12-02, bench/results/demo_cpu.json "recipe_sweep")
    dropout: float = 0.1
    # fine-tuned from the text-to-image model; 300 steps (text loss 0.005) rank as well as 600 (0.001): best of 4,
    # held-out + seen, 154 / 160 right vs 152 / 160, in half the time (2026-12-02)
    caption_iters: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    # the transformers' training precision (pre-training, caption model, super-resolution; DeepSpeed bf16 keeps fp32
    # master weights): "auto" = bf16 where the CPU has bf16 instructions (AVX512-BF16 or AMX: the demo's pre-training
    # step in 106 ms instead of 236, its loss within 1%), fp32 elsewhere (bf16 is emulated there, slower than fp32).
    # The VQ-VAE stays fp32: bf16 autocast did not shorten its 3,500 steps (125 s vs 128 s)
    precision: str = "auto"
    prompts_seen: int = 30  # training captions also sampled, for comparison
    samples_per_prompt: int = 16  # draws per caption (every held-out combination is prompted)
    rerank_group: int = 4  # post-selection keeps the lowest CapLoss of each group of this many draws
    temperature: float = 0.9
    top_k: int = 20
    super_resolution: bool = False  # the optional SR stages (demo/superres.py), after the report
    # SR training windows cut from each 64 px scene (preprocess --crops-per-image; 3 did not raise the agreement)
    sr_crops_per_image: int = 1
    sr_iters: int = 3000  # SR fine-tuning steps from the text-to-image model (agreement: 2,000 88.3%, 3,000 90.9%,
    # 5,000 90.3%: levelled off)
    sr_lr: float = 1e-3
    # magnification's sampling temperature (top-k as for text-to-image); 0 = greedy: super-resolution is nearly
    # deterministic, and with 2,000 steps greedy agreed on 92.5% of 40 samples where 0.9 agreed on 75-90% (4 draws)
    sr_temperature: float = 0.0
    sr_eval_per_prompt: int = 16  # generated samples magnified per demo prompt (by post-selection rank; 16 = all)
    sr_eval_scenes: int = 16  # rendered scenes magnified for PSNR against a true 2x rendering


FAST = DemoSettings(num_images=3000, vq_steps=150, vq_hidden=32, gpt_iters=120, caption_iters=60, prompts_seen=2,
                    samples_per_prompt=4, rerank_group=2, sr_iters=30, sr_eval_per_prompt=1, sr_eval_scenes=4)


# The settings each stage reads; a stage's fingerprint also covers every earlier stage's settings, so a
# change re-runs that stage and what follows it, and nothing before it.
STAGE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("seed", "num_images", "image_size"),
    ("text_vocab",),
    ("vq_steps", "vq_hidden", "vq_codes", "vq_code_dim", "vq_downsample", "vq_batch", "vq_style_fraction", "vq_2x_fraction"),
    (),
    ("gpt_iters", "batch_size", "lr", "dropout", "precision"),
    ("caption_iters",),
    ("prompts_seen", "samples_per_prompt", "temperature", "top_k"),
    ("rerank_group",),
    (),
)


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), so that bf16 training beats fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolved(settings: DemoSettings) -> DemoSettings:
    """`settings` with precision "auto" replaced by what this machine trains fastest in (see DemoSettings)."""
    if settings.precision not in PRECISIONS:
        from megatron_cogview.config import ConfigError

        raise ConfigError(f"demo precision {settings.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if settings.precision != "auto":
        return settings
    return replace(settings, precision="bf16" if cpu_has_bf16() else "fp32")


def _fingerprint(settings: DemoSettings, index: int) -> str:
    fields = [f for group in STAGE_FIELDS[:index] for f in group]
    values = {f: getattr(settings, f) for f in fields}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Stages:
    """Runs stages in order, once: a stage whose marker matches its settings and whose outputs exist is skipped;
    a stage that must run again first deletes its old outputs (so e.g. a longer pre-training starts fresh, not
    resumed), and every stage after it runs again too (it read what that stage wrote)."""

    def __init__(self, out: Path, settings: DemoSettings, log: Log, total: int) -> None:
        self.out, self.settings, self.log, self.total = out, settings, log, total
        self.marks = out / "stages"
        self.marks.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self.times: dict[str, float] = {}
        self.rerun_rest = False  # an earlier stage ran: the later ones are stale

    def run(self, name: str, fn: Callable[[], Any], outputs: tuple[Path, ...] = ()) -> None:
        self.index += 1
        mark = self.marks / f"{name}.json"
        fp = _fingerprint(self.settings, self.index)
        done = mark.is_file() and json.loads(mark.read_text()).get("fingerprint") == fp
        if done and not self.rerun_rest and all(path.exists() for path in outputs):
            self.log(f"[{self.index}/{self.total}] {name}: done before, skipped")
            return
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
        self.log(f"[{self.index}/{self.total}] {name} ...")
        self.rerun_rest = True
        start = time.perf_counter()
        fn()
        self.times[name] = time.perf_counter() - start
        mark.write_text(json.dumps({"fingerprint": fp, "seconds": round(self.times[name], 1), "index": self.index}))
        self.log(f"[{self.index}/{self.total}] {name}: {self.times[name]:.0f} s")


def _pretrain(args: list[str], log_file: Path, log: Log, module: str = "megatron_cogview.commands.pretrain", *,
              threads: int) -> None:
    """Run a training entry in a child process with `threads` CPU threads; our log lines are shown, DeepSpeed's
    chatter goes to log_file."""
    code = f"import sys; from {module} import main; sys.exit(main(sys.argv[1:]))"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as f, subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=with_tcmalloc({**os.environ, "OMP_NUM_THREADS": str(threads)}),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if line.startswith(("iteration", "done", "resumed", "pretrain_gpt2.py")):
                log("    " + line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}); see {log_file}")


def _text_budget(sp_model: str, captions: list[str]) -> int:
    from tokenization.text import TextTokenizer

    tok = TextTokenizer(sp_model)
    return max(len(tok.encode(c)) for c in captions)


def run_demo(out: str | Path, settings: DemoSettings, log: Log = print, *, threads: int) -> dict[str, Any]:
    """Run (or continue) the whole demo into `out` with `threads` CPU threads per stage (torch here, OMP in the
    training processes); returns the metrics written to report/metrics.json."""
    import functools

    import torch

    from megatron_cogview.demo.evaluate import evaluate
    from megatron_cogview.demo.metrics import demo_metrics
    from megatron_cogview.demo.report import write_report

    torch.set_num_threads(threads)
    here, children = loaded_allocator(), with_tcmalloc(os.environ).get("LD_PRELOAD", "")
    log(f"allocator: {here}; training processes: {'tcmalloc' if 'tcmalloc' in children else 'glibc malloc'}"
        + ("" if "tcmalloc" in here + children else " (faster with tcmalloc: apt-get install libtcmalloc-minimal4)"))
    pretrain = functools.partial(_pretrain, threads=threads)
    out = Path(out).resolve()
    s = resolved(settings)
    log(f"training precision: {s.precision}" + (" (this CPU has bf16 instructions)" if settings.precision == "auto"
                                                 and s.precision == "bf16" else ""))
    st = Stages(out, s, log, total=len(STAGE_FIELDS))
    synth, tok, shards, ckpt = out / "data" / "synth", out / "tokenizers", out / "data" / "shards", out / "checkpoints"
    sp_prefix, vq_dir = tok / "text", tok / "vqvae"
    vq_extra = out / "data" / "synth-styles"  # the tokenizer's extra new-style images, a folder per style
    vq_2x = out / "data" / "synth-vq-2x"  # the tokenizer's scenes at twice the pixels

    def do_synth() -> None:
        from data_utils.synth import write_synth

        summary = write_synth(str(synth), s.num_images, s.image_size, s.seed)
        log(f"    {summary.num_train} training images, {summary.num_heldout} of held-out combinations "
            f"({len(summary.heldout)} colour/shape/position combinations never captioned in training)")

    def do_text() -> None:
        from tokenization.text import train_text_tokenizer

        tok.mkdir(parents=True, exist_ok=True)
        train_text_tokenizer([str(synth / "captions.jsonl")], sp_prefix, s.text_vocab, caption_column="caption",
                             seed=s.seed)

    def do_vqvae() -> None:
        from data_utils.image_sources import find_images
        from data_utils.synth import NEW_STYLES, write_synth
        from tokenization.vqvae.config import VQVAEConfig
        from tokenization.vqvae.train import TrainOptions, train_vqvae

        cfg = VQVAEConfig(image_size=s.image_size, downsample=s.vq_downsample, codebook_size=s.vq_codes,
                          code_dim=s.vq_code_dim, hidden_channels=s.vq_hidden, res_channels=s.vq_hidden // 2,
                          num_res_blocks=1)
        # The tokenizer is unsupervised: it sees images of every combination (held-out ones included), and some
        # in a style pre-training never shows the transformer (another seed than the style bench's images).
        data = [str(synth / "images")]
        extra = round(s.num_images * s.vq_style_fraction / len(NEW_STYLES))
        vq_extra.mkdir(parents=True, exist_ok=True)  # a stage output either way (empty when the fraction is 0)
        for k, style in enumerate(NEW_STYLES if extra else ()):
            write_synth(str(vq_extra / style), extra, s.image_size, s.seed + 2000 + k, num_heldout=0, style=style)
            data.append(str(vq_extra / style / "images"))
        scenes_2x = round(s.num_images * s.vq_2x_fraction)
        if scenes_2x:  # other scenes than the transformer's (another seed), read as random windows at 1x the pixels
            write_synth(str(vq_2x), scenes_2x, 2 * s.image_size, s.seed + 3000, num_heldout=0)
            data.append(str(vq_2x / "images"))
        opts = TrainOptions(data=data, out=vq_dir, steps=s.vq_steps, batch_size=s.vq_batch, random_crop=scenes_2x > 0,
                            lr=2e-3, warmup_steps=min(100, s.vq_steps // 10), workers=0, cache_images=True, save_every=10**9,
                            log_every=max(1, s.vq_steps // 6), seed=s.seed, resume=(vq_dir / "checkpoint.pt").exists())
        train_vqvae(cfg, opts, find_images(opts.data), log=lambda m: log("    " + m))

    def seq_len() -> int:
        caps = [json.loads(x)["caption"] for x in (synth / "captions.jsonl").read_text().splitlines()]
        caps += [json.loads(x)["caption"] for x in (synth / "heldout.jsonl").read_text().splitlines()]
        from tokenization.templates import TEXT_TO_IMAGE

        grid = (s.image_size // s.vq_downsample) ** 2
        return TEXT_TO_IMAGE.length(_text_budget(str(sp_prefix) + ".model", caps), grid) + 1  # + 1 shifted label

    def do_shards() -> None:
        from data_utils.preprocess import PreprocessConfig, preprocess

        for task in ("text2image",):  # the caption model reorders these same shards on the fly
            preprocess(PreprocessConfig(inputs=(str(synth / "captions.jsonl"),), text_tokenizer=str(sp_prefix) + ".model",
                                        image_tokenizer=str(vq_dir), out=str(shards / task), seq_len=seq_len(),
                                        task=task, samples_per_shard=2000, batch_size=256),
                       log=lambda m: log("    " + m))

    def train_args(task: str, iters: int) -> list[str]:
        return ["--preset", "demo", "--max-position-embeddings", str(seq_len() - 1),
                "--train-data", str(shards / "text2image"), "--train-iters", str(iters), "--micro-batch-size",
                str(s.batch_size), "--lr", str(s.lr), "--warmup", "0.05", "--seed", str(s.seed),
                "--log-interval", str(max(1, iters // 10)), "--save", str(ckpt / task), "--load", str(ckpt / task),
                "--save-interval", str(max(1, iters // 3)), "--text-tokenizer", str(sp_prefix) + ".model",
                "--image-tokenizer", str(vq_dir), "--precision", s.precision]

    st.run("synthetic dataset", do_synth, (synth,))
    st.run("text tokenizer (SentencePiece)", do_text, (tok,))
    st.run("image tokenizer (VQ-VAE)", do_vqvae, (vq_dir, vq_extra, vq_2x))
    st.run("token shards", do_shards, (shards,))
    dropout = ["--hidden-dropout", str(s.dropout), "--attention-dropout", str(s.dropout)]
    st.run("pretrain CogView (DeepSpeed)", lambda: pretrain(train_args("text2image", s.gpt_iters) + dropout,
                                                             out / "logs" / "pretrain.log", log),
           (ckpt / "text2image",))
    st.run("caption model for post-selection", lambda: pretrain(
        train_args("image2text", s.caption_iters) + dropout + ["--finetune-from", str(ckpt / "text2image")],
        out / "logs" / "caption.log", log, module="megatron_cogview.finetune.caption_model"), (ckpt / "image2text",))
    st.run("generate + score", lambda: evaluate(out, s, log), (out / "samples",))
    st.run("shapes FID, Caption Loss, 95% CIs", lambda: demo_metrics(out, s, log), (out / "eval",))
    metrics: dict[str, Any] = {}
    st.run("report", lambda: metrics.update(write_report(out, s, st.times)),
           (out / "report" / "metrics.json", out / "report" / "summary.md"))  # report/ also holds the SR stages' files
    if not metrics:
        metrics = json.loads((out / "report" / "metrics.json").read_text())
    if s.super_resolution:
        from megatron_cogview.demo.superres import run_superres

        metrics["superres"] = run_superres(out, s, log, pretrain)
    return metrics
