"""The one model of a `cogview serve` process and the queue in front of it.

Requests become jobs; one worker thread owns the model. Each round it takes the oldest pending job and every
other pending job with the same sampling settings (temperature, top-k, top-p), up to `max_batch_rows` samples,
and draws all their images in ONE batched, KV-cached decode. A sample's seed depends only on the request's seed,
its prompt and its index (as in `cogview generate`), so the same request gives the same bytes whatever it was
batched with. A job that fails records its error; the worker goes on with the next one.
"""
from __future__ import annotations

import io
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from megatron_cogview.generation import GenerationConfig, caption_loss, generate_image_codes
from megatron_cogview.model import CogViewModel
from megatron_cogview.tasks.captioning import caption_images, caption_template, rerank_images
from megatron_cogview.tasks.prompts import PromptLine
from megatron_cogview.tasks.text_to_image import encode_prompt, sample_seed
from tokenization.templates import TEXT_TO_IMAGE
from tokenization.unified import UnifiedTokenizer


@dataclass(frozen=True)
class ImageRequest:
    """One text-to-image request (also the JSON body of POST /api/text2image)."""

    prompt: str
    num_samples: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234
    post_selection: bool = False

    def sampling(self) -> tuple[float, int, float]:
        """What must be equal for two requests to share a decode."""
        return (self.temperature, self.top_k, self.top_p)


@dataclass
class Job:
    """A request's life: queued -> running -> done | failed; images appear in `images` when they are ready."""

    request: ImageRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"
    done_tokens: int = 0
    total_tokens: int = 0
    error: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)  # {"index", "seed", "png", "caption_loss"?}
    created: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        """The JSON the page polls (image bytes are served separately)."""
        return {"id": self.id, "status": self.status, "error": self.error,
                "progress": round(self.done_tokens / self.total_tokens, 4) if self.total_tokens else 0.0,
                "settings": vars(self.request),
                "images": [{k: v for k, v in im.items() if k != "png"} for im in self.images]}


class Worker:
    """Owns the model(s); jobs go in through `submit`, a daemon thread serves them in batches."""

    def __init__(self, model: CogViewModel, tokenizer: UnifiedTokenizer, caption_model: CogViewModel | None = None,
                 max_batch_rows: int = 16, keep_jobs: int = 256, start: bool = True) -> None:
        self.model, self.tokenizer, self.caption_model = model, tokenizer, caption_model
        self.max_batch_rows, self.keep_jobs = max_batch_rows, keep_jobs
        self.jobs: dict[str, Job] = {}
        self._pending: "queue.Queue[Job]" = queue.Queue()
        self._lock = threading.Lock()  # guards self.jobs and the model (captioning runs on request threads)
        self._thread = threading.Thread(target=self._loop, name="cogview-serve-worker", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start serving the queue (once)."""
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def grid(self) -> int:
        return self.tokenizer.image.grid_size

    def submit(self, request: ImageRequest) -> Job:
        """Queue a request; returns its job at once."""
        job = Job(request, total_tokens=request.num_samples * self.grid * self.grid)
        with self._lock:
            self.jobs[job.id] = job
            for old in sorted(self.jobs.values(), key=lambda j: j.created)[: max(0, len(self.jobs) - self.keep_jobs)]:
                if old.status in ("done", "failed"):
                    del self.jobs[old.id]
        self._pending.put(job)
        return job

    # ---- the worker thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = [self._pending.get()]
            rows = batch[0].request.num_samples
            held: list[Job] = []
            while True:  # everything already waiting that can share this decode
                try:
                    job = self._pending.get_nowait()
                except queue.Empty:
                    break
                if job.request.sampling() == batch[0].request.sampling() and rows + job.request.num_samples <= self.max_batch_rows:
                    batch.append(job)
                    rows += job.request.num_samples
                else:
                    held.append(job)
            for job in held:
                self._pending.put(job)
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        for job in batch:
            job.status = "running"
        try:
            with self._lock:
                self._draw(batch)
        except Exception as e:  # one bad batch must not take the server down
            for job in batch:
                if job.status != "done":
                    job.status, job.error = "failed", f"{type(e).__name__}: {e}"

    def _draw(self, batch: list[Job]) -> None:
        tok, grid = self.tokenizer, self.grid
        max_len = TEXT_TO_IMAGE.text_budget(self.model.config.max_position_embeddings, grid * grid)
        prompts, seeds, owners = [], [], []
        for job in batch:
            r = job.request
            enc = encode_prompt(tok, PromptLine("web", r.prompt, 1), max_len, log=lambda _m: None)
            if isinstance(enc, str):
                job.status, job.error = "failed", enc
                continue
            for j in range(r.num_samples):
                prompts.append(enc[0])
                seeds.append(sample_seed(r.seed, r.prompt, j))
                owners.append((job, j))
        if not prompts:
            return
        r0 = batch[0].request
        config = GenerationConfig(temperature=r0.temperature, top_k=r0.top_k, top_p=r0.top_p,
                                  max_inference_batch_size=self.max_batch_rows)
        live = [job for job in batch if job.status == "running"]

        def progress(done: int, total: int) -> None:
            for job in live:
                job.done_tokens = job.total_tokens * done // total

        layout = tok.layout
        image_range = (layout.image_offset, layout.image_offset + layout.num_image_tokens)
        codes = generate_image_codes(self.model, prompts, grid * grid, image_range, config, seeds, progress).cpu()
        pictures = tok.image.decode(codes.view(-1, grid, grid))
        by_job: dict[str, list[int]] = {}
        for row, (job, _) in enumerate(owners):
            by_job.setdefault(job.id, []).append(row)
        for job in live:
            rows = by_job[job.id]
            order, losses = list(range(len(rows))), None
            if job.request.post_selection and self.caption_model is not None:
                sel = rerank_images(self.caption_model, tok, [job.request.prompt], codes[rows].unsqueeze(0), len(rows),
                                    config)
                order, losses = sel.indices[0].tolist(), sel.scores[0]
            for rank, j in enumerate(order):
                entry: dict[str, Any] = {"index": j, "rank": rank, "seed": seeds[rows[j]], "png": _png(pictures[rows[j]])}
                if losses is not None:
                    entry["caption_loss"] = round(float(losses[j]), 5)  # scores are per candidate
                job.images.append(entry)
            job.done_tokens, job.status = job.total_tokens, "done"

    # ---- image-to-text (runs on the request's thread, under the model lock) ---------------------------
    def caption(self, image: Image.Image, num_captions: int, seed: int) -> list[dict[str, Any]]:
        """Captions of an image with their Caption Loss under the caption model (best first)."""
        model = self.caption_model
        assert model is not None
        tok = self.tokenizer
        config = GenerationConfig(top_k=20, seed=seed)
        with self._lock:
            texts = caption_images(model, tok, [image], config, num_samples=num_captions)[0]
            codes = tok.image.encode([image])
            texts = [t for t in dict.fromkeys(texts) if tok.encode_text(t)]
            if not texts:
                return []
            ids = tok.layout.image_id(codes.long().reshape(1, -1)).expand(len(texts), -1)
            losses = caption_loss(model, ids, [tok.encode_text(t) for t in texts], caption_template(tok), config)
        ranked = sorted(zip(texts, losses.tolist()), key=lambda x: x[1])
        return [{"caption": t, "caption_loss": round(float(loss), 5)} for t, loss in ranked]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
