"""`cogview serve` on the fast demo's checkpoints: the HTTP API (FastAPI's TestClient) and the page itself in a
real headless Chromium (Playwright driving the system's browser)."""
from __future__ import annotations

import argparse
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import megatron_cogview.serve.worker as worker_module
from megatron_cogview.commands.generate import load_for_generation
from megatron_cogview.serve.app import Limits, create_app
from megatron_cogview.serve.worker import Worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _load(path: Path):  # type: ignore[no-untyped-def]
    args = argparse.Namespace(device="cpu", dtype="fp32", text_tokenizer="", image_tokenizer="")
    return load_for_generation(args, str(path))


@pytest.fixture(scope="module")
def models(demo: Path):  # type: ignore[no-untyped-def]
    model, tok = _load(demo / "checkpoints" / "text2image")
    caption, _ = _load(demo / "checkpoints" / "image2text")
    return model, tok, caption


def _client(models, start: bool = True, **limits: int) -> tuple[TestClient, Worker]:  # type: ignore[no-untyped-def]
    model, tok, caption = models
    worker = Worker(model, tok, caption, max_batch_rows=16, start=start)
    return TestClient(create_app(worker, Limits(**limits))), worker


def _wait(client: TestClient, job: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/jobs/{job}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def _images(client: TestClient, body: dict) -> list[bytes]:
    return [client.get(f"/api/jobs/{body['id']}/images/{im['index']}.png").content for im in body["images"]]


REQ = {"prompt": "a red circle at the top left", "num_samples": 3, "top_k": 20, "seed": 7}


def test_text2image_returns_n_images_and_the_same_seed_gives_the_same_bytes(models) -> None:  # type: ignore[no-untyped-def]
    client, worker = _client(models)
    first = _wait(client, client.post("/api/text2image", json=REQ).json()["job"])
    assert first["status"] == "done" and first["progress"] == 1.0
    pngs = _images(client, first)
    assert len(pngs) == 3 and len(set(pngs)) > 1
    size = worker.tokenizer.image.image_size
    assert all(Image.open(io.BytesIO(p)).size == (size, size) for p in pngs)
    again = _wait(client, client.post("/api/text2image", json=REQ).json()["job"])
    assert _images(client, again) == pngs
    other = _wait(client, client.post("/api/text2image", json={**REQ, "seed": 8}).json()["job"])
    assert _images(client, other) != pngs
    settings = client.get(f"/api/jobs/{first['id']}/images/0.json").json()
    assert settings["seed"] == first["images"][0]["seed"] and settings["prompt"] == REQ["prompt"]


def test_concurrent_requests_share_one_decode_and_match_their_solo_bytes(models, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    solo_client, _ = _client(models)
    solo = [_images(solo_client, _wait(solo_client, solo_client.post("/api/text2image", json=r).json()["job"]))
            for r in (REQ, {**REQ, "prompt": "a blue square", "num_samples": 2})]
    calls: list[int] = []
    real = worker_module.generate_image_codes
    monkeypatch.setattr(worker_module, "generate_image_codes",
                        lambda model, prompts, *a, **k: calls.append(len(prompts)) or real(model, prompts, *a, **k))
    client, worker = _client(models, start=False)  # both requests are queued before the worker looks
    jobs = [client.post("/api/text2image", json=r).json()["job"] for r in (REQ, {**REQ, "prompt": "a blue square",
                                                                                 "num_samples": 2})]
    worker.start()
    done = [_wait(client, j) for j in jobs]
    assert calls == [5]  # one batched decode for 3 + 2 samples
    assert [_images(client, d) for d in done] == solo


@pytest.mark.parametrize("body,needle", [
    ({**REQ, "num_samples": 0}, "num_samples=0 must be in [1, 16]"),
    ({**REQ, "num_samples": 17}, "num_samples=17"),
    ({**REQ, "prompt": "   "}, "prompt is empty"),
    ({**REQ, "prompt": "x" * 301}, "the limit is 300"),
    ({**REQ, "top_p": 2}, "top_p=2.0 must be in (0, 1]"),
    ({**REQ, "temperature": -1}, "temperature"),
    ({"num_samples": 2}, "prompt: Field required"),
    ({**REQ, "num_samples": "many"}, "num_samples"),
])
def test_bad_parameters_are_422_with_one_clear_message(models, body: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    client, _ = _client(models, start=False)
    r = client.post("/api/text2image", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"], r.json()


def test_unknown_job_is_404_and_a_failing_batch_does_not_stop_the_server(models, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, _ = _client(models)
    assert client.get("/api/jobs/nope").status_code == 404
    real = worker_module.generate_image_codes
    state = {"fail": True}

    def flaky(*a, **k):  # type: ignore[no-untyped-def]
        if state.pop("fail", False):
            raise RuntimeError("simulated decode failure")
        return real(*a, **k)

    monkeypatch.setattr(worker_module, "generate_image_codes", flaky)
    failed = _wait(client, client.post("/api/text2image", json=REQ).json()["job"])
    assert failed["status"] == "failed" and "simulated decode failure" in failed["error"]
    ok = _wait(client, client.post("/api/text2image", json=REQ).json()["job"])
    assert ok["status"] == "done" and len(ok["images"]) == 3


def test_post_selection_orders_by_caption_loss_and_image2text_scores_captions(models) -> None:  # type: ignore[no-untyped-def]
    client, _ = _client(models)
    body = _wait(client, client.post("/api/text2image", json={**REQ, "num_samples": 4, "post_selection": True}).json()["job"])
    losses = [im["caption_loss"] for im in body["images"]]
    assert len(losses) == 4 and losses == sorted(losses)
    png = _images(client, body)[0]
    r = client.post("/api/image2text", files={"file": ("x.png", png, "image/png")}, data={"num_captions": "3"})
    assert r.status_code == 200, r.text
    caps = r.json()["captions"]
    assert caps and [c["caption_loss"] for c in caps] == sorted(c["caption_loss"] for c in caps)
    bad = client.post("/api/image2text", files={"file": ("x.txt", b"not an image", "text/plain")})
    assert bad.status_code == 422 and "not an image" in bad.json()["detail"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium; .ci/run installs it)")
def test_page_in_headless_chromium(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import uvicorn
    from playwright.sync_api import sync_playwright

    _, worker = _client(models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(worker), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#info:has-text('image codes')")
            page.fill("#prompt", "a green triangle at the bottom right")
            page.fill("#num_samples", "4")
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('img.sample').length === 4", timeout=300_000)
            page.wait_for_function(  # every picture loaded and decoded by the browser
                "Array.from(document.querySelectorAll('img.sample')).every(i => i.complete && i.naturalWidth > 0)")
            assert "done (100%)" in page.inner_text("#status")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            page.fill("#num_samples", "99")  # the server's limit reaches the page as one clear line
            page.click("#generate")
            page.wait_for_selector("#error:has-text('num_samples=99 must be in [1, 16]')")
            browser.close()
        assert shot.stat().st_size > 10_000
    finally:
        server.should_exit = True
        thread.join(timeout=10)
