"""The HTTP API and page of `cogview serve` (FastAPI): requests are validated here, served by the Worker."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError

from megatron_cogview.serve.worker import ImageRequest, Job, Worker

PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (enforced on the server, shown on the page)."""

    max_samples: int = 16
    max_prompt_chars: int = 300
    max_captions: int = 8
    max_upload_bytes: int = 8 * 2**20


def _check(body: ImageRequest, limits: Limits, has_caption_model: bool) -> ImageRequest:
    """The request (FastAPI has checked the types), or HTTP 422 naming the first value out of range."""
    problems = [
        (not body.prompt.strip(), "prompt is empty"),
        (len(body.prompt) > limits.max_prompt_chars, f"prompt has {len(body.prompt)} characters; the limit is "
                                                    f"{limits.max_prompt_chars}"),
        (not 1 <= body.num_samples <= limits.max_samples, f"num_samples={body.num_samples} must be in "
                                                         f"[1, {limits.max_samples}]"),
        (not 0.0 <= body.temperature <= 10.0, f"temperature={body.temperature} must be in [0, 10] (0 = greedy)"),
        (body.top_k < 0, f"top_k={body.top_k} must be >= 0 (0 = off)"),
        (not 0.0 < body.top_p <= 1.0, f"top_p={body.top_p} must be in (0, 1]"),
        (body.seed < 0, f"seed={body.seed} must be >= 0"),
        (body.post_selection and not has_caption_model, "post_selection needs a caption model: start the server "
                                                        "with --caption-model"),
    ]
    for bad, message in problems:
        if bad:
            raise HTTPException(status_code=422, detail=message)
    return body


def _job(worker: Worker, job_id: str) -> Job:
    job = worker.jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r} (finished jobs are kept for a while only)")
    return job


def _image(job: Job, index: int) -> dict[str, Any]:
    for entry in job.images:
        if entry["index"] == index:
            return entry
    raise HTTPException(status_code=404, detail=f"job {job.id} has no image {index} (yet)")


def create_app(worker: Worker, limits: Limits = Limits(), title: str = "CogView") -> FastAPI:
    """The FastAPI app serving `worker`."""
    app = FastAPI(title=f"{title} (megatron-cogview)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:  # one clear line, not a dump
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse(status_code=422, content={"detail": f"{where}: {first.get('msg', 'invalid value')}"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        image = worker.tokenizer.image
        return {"grid": worker.grid, "image_size": image.image_size if image is not None else None,
                "caption_model": worker.caption_model is not None, "limits": vars(limits)}

    @app.post("/api/text2image", status_code=202)
    def text2image(body: ImageRequest) -> dict[str, Any]:
        job = worker.submit(_check(body, limits, worker.caption_model is not None))
        return {"job": job.id}

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return _job(worker, job_id).public()

    @app.get("/api/jobs/{job_id}/images/{index}.png")
    def job_png(job_id: str, index: int) -> Response:
        entry = _image(_job(worker, job_id), index)
        return Response(entry["png"], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="cogview-{job_id}-{index}.png"'})

    @app.get("/api/jobs/{job_id}/images/{index}.json")
    def job_settings(job_id: str, index: int) -> Response:
        job = _job(worker, job_id)
        entry = _image(job, index)
        meta = {**vars(job.request), **{k: v for k, v in entry.items() if k != "png"}}
        return Response(json.dumps(meta, indent=1), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="cogview-{job_id}-{index}.json"'})

    @app.post("/api/image2text")
    async def image2text(file: UploadFile = File(...), num_captions: int = Form(4), seed: int = Form(1234)) -> dict[str, Any]:
        if worker.caption_model is None:
            raise HTTPException(status_code=422, detail="image-to-text needs a caption model: start the server with "
                                                        "--caption-model")
        if not 1 <= num_captions <= limits.max_captions:
            raise HTTPException(status_code=422, detail=f"num_captions={num_captions} must be in [1, {limits.max_captions}]")
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(status_code=413, detail=f"the image is larger than {limits.max_upload_bytes} bytes")
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except (UnidentifiedImageError, OSError):
            raise HTTPException(status_code=422, detail=f"{file.filename or 'the upload'} is not an image PIL can read")
        return {"captions": worker.caption(image, num_captions, seed)}

    return app
