"""Report figures drawn with PIL: the wide sample grid, training curves and VQ-VAE reconstructions."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SCALE = 4  # 32 px samples are shown at 128 px, nearest neighbour (no blur: the pixels the model drew)
SHOWN = 8  # samples per caption in the grid
LABEL_W, PAD = 330, 8  # grid: caption column width; gap around each sample
PICK, RIGHT, WRONG = (20, 90, 230), (30, 160, 60), (210, 40, 40)
SERIES = (("loss", "total", (20, 20, 20)), ("text_loss", "text", (210, 110, 20)), ("image_loss", "image", (30, 100, 200)))
_LINE = re.compile(r"iteration (\d+)/\d+ \|.*?\| loss ([\d.eE+-]+|nan|inf|n/a) \| text loss ([\d.eE+-]+|nan|inf|n/a) \| "
                   r"image loss ([\d.eE+-]+|nan|inf|n/a)")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _upscale(im: Image.Image, scale: int = SCALE) -> Image.Image:
    return im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST)


def sample_grid(out: Path, scores: dict[str, Any], target: Path) -> dict[str, int]:
    """One row per caption: the caption, SHOWN of its draws upscaled, the post-selected pick framed in blue;
    a green/red bar under each draw says whether the attribute checker read it right. Returns the grid's shape."""
    from data_utils.checker import check_image

    rows: list[Image.Image] = []
    font, small = _font(15), _font(12)
    for group in ("heldout", "seen"):
        folder = out / "samples" / group
        if not (folder / "samples.jsonl").is_file():
            continue
        records = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
        for pid, p in scores.get(group, {}).get("per_prompt", {}).items():
            draws = sorted((r for r in records if r.get("id") == pid and "error" not in r), key=lambda r: r["sample"])
            shown = draws[:SHOWN]
            pick = [r for r in draws if r.get("rank") == 0]
            if pick and pick[0] not in shown:  # the pick is always on show
                shown = shown[:SHOWN - 1] + pick
            cells = [_upscale(Image.open(folder / r["file"])) for r in shown]
            if not cells:
                continue
            cell = cells[0].width
            label_w, pad = LABEL_W, PAD
            row = Image.new("RGB", (label_w + SHOWN * (cell + pad), cell + 2 * pad + 6), (255, 255, 255))
            d = ImageDraw.Draw(row)
            d.text((6, pad), "held-out combination" if group == "heldout" else "seen in training", fill=(110, 110, 110),
                   font=small)
            d.text((6, pad + 18), p["prompt"], fill=(0, 0, 0), font=font)
            pick_ok = "right" if p.get("best_correct") else "wrong"
            d.text((6, pad + 42), f"pick (lowest CapLoss of {len(draws)}): {pick_ok}", fill=PICK, font=small)
            for i, (im, r) in enumerate(zip(cells, shown)):
                x = label_w + i * (cell + pad)
                row.paste(im, (x, pad))
                got = check_image(Image.open(folder / r["file"]).convert("RGB"))
                ok = [got.color, got.shape, got.position] == list(p["expected"])
                d.rectangle((x, pad + cell + 2, x + cell - 1, pad + cell + 5), fill=RIGHT if ok else WRONG)
                if r.get("rank") == 0:
                    d.rectangle((x - 3, pad - 3, x + cell + 2, pad + cell + 2), outline=PICK, width=3)
            rows.append(row)
    if not rows:
        return {"rows": 0, "width": 0, "height": 0}
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 2 for r in rows)), (225, 225, 225))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 2
    sheet.save(target)
    return {"rows": len(rows), "width": sheet.width, "height": sheet.height, "scale": SCALE}


def read_curve(log_file: Path) -> list[dict[str, float]]:
    """The logged training lines of a demo training stage: iteration, total, text and image loss."""
    if not log_file.is_file():
        return []
    points = []
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LINE.search(line)
        if m:
            it, *losses = m.groups()
            points.append({"iteration": int(it), **{k: float("nan" if v == "n/a" else v) for (k, _, _), v in zip(SERIES, losses)}})
    return points


def _panel(title: str, points: list[dict[str, float]], size: tuple[int, int]) -> Image.Image:
    w, h = size
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    font, small = _font(15), _font(12)
    d.text((10, 6), title, fill=(0, 0, 0), font=font)
    left, right, top, bottom = 60, w - 15, 52, h - 40
    d.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    finite = [p[k] for p in points for k, _, _ in SERIES if math.isfinite(p[k])]
    if len(points) < 1 or not finite:
        d.text((left + 10, top + 10), "no logged steps", fill=(120, 120, 120), font=small)
        return im
    x0, x1 = 0, max(p["iteration"] for p in points)
    y0, y1 = 0.0, max(finite) * 1.05
    sx = lambda v: left + (right - left) * (v - x0) / max(1, x1 - x0)  # noqa: E731
    sy = lambda v: bottom - (bottom - top) * (v - y0) / (y1 - y0)  # noqa: E731
    for i in range(5):  # grid and tick labels
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        d.line((left, sy(yv), right, sy(yv)), fill=(230, 230, 230))
        d.text((6, sy(yv) - 7), f"{yv:.2f}", fill=(60, 60, 60), font=small)
        d.text((sx(xv) - 10, bottom + 4), f"{xv:.0f}", fill=(60, 60, 60), font=small)
    d.text(((left + right) // 2 - 20, bottom + 20), "step", fill=(0, 0, 0), font=small)
    for n, (key, name, colour) in enumerate(SERIES):
        xy = [(sx(p["iteration"]), sy(p[key])) for p in points if math.isfinite(p[key])]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for x, y in xy:
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        d.line((left + 110 * n, 38, left + 110 * n + 20, 38), fill=colour, width=3)  # legend, above the plot
        d.text((left + 110 * n + 25, 31), f"{name} loss", fill=colour, font=small)
    return im


def training_curves(curves: dict[str, list[dict[str, float]]], target: Path) -> None:
    """Side-by-side panels (one per training stage) of total, text and image loss against step."""
    panels = [_panel(title, pts, (520, 320)) for title, pts in curves.items()]
    sheet = Image.new("RGB", (sum(p.width for p in panels), 320), (255, 255, 255))
    for i, p in enumerate(panels):
        sheet.paste(p, (i * 520, 0))
    sheet.save(target)


def vqvae_reconstructions(out: Path, target: Path, count: int = 8) -> dict[str, Any]:
    """Held-out real images (top row) over their VQ-VAE reconstructions (bottom row), upscaled; returns PSNRs."""
    import torch

    from tokenization.image import ImageTokenizer

    synth = out / "data" / "synth"
    recs = [json.loads(x) for x in (synth / "heldout.jsonl").read_text().splitlines()][:count]
    originals = [Image.open(synth / r["image"]).convert("RGB") for r in recs]
    tok = ImageTokenizer.from_pretrained(str(out / "tokenizers" / "vqvae"))
    with torch.no_grad():
        recon = tok.decode(tok.encode(originals))
    psnrs = []
    for a, b in zip(originals, recon):
        x = torch.tensor(list(a.getdata()), dtype=torch.float64)
        y = torch.tensor(list(b.convert("RGB").resize(a.size).getdata()), dtype=torch.float64)
        mse = float(((x - y) ** 2).mean())
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))
    cell, pad, label_w = originals[0].width * SCALE, 8, 130
    sheet = Image.new("RGB", (label_w + len(originals) * (cell + pad), 2 * (cell + pad) + 24), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(12)
    d.text((6, pad + cell // 2 - 8), "original", fill=(0, 0, 0), font=font)
    d.text((6, 2 * pad + cell + cell // 2 - 8), "VQ-VAE", fill=(0, 0, 0), font=font)
    for i, (a, b, p) in enumerate(zip(originals, recon, psnrs)):
        x = label_w + i * (cell + pad)
        sheet.paste(_upscale(a), (x, pad))
        sheet.paste(_upscale(b.resize(a.size)), (x, 2 * pad + cell))
        d.text((x + 4, 2 * pad + 2 * cell + 4), f"{p:.1f} dB", fill=(60, 60, 60), font=small)
    sheet.save(target)
    return {"images": len(psnrs), "psnr_db": psnrs, "mean_psnr_db": sum(psnrs) / max(1, len(psnrs))}
