"""Attribute checker: reads a synthetic image back into (colour, shape, position) by pixel analysis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .synth import COLORS, Combination, outline_width

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [c, 3]
_NAMES = list(COLORS)
# Shape by the fraction of its bounding box a blob fills: a square fills 1, a disc pi/4, a triangle 1/2.
SQUARE_FILL = 0.9  # above: square
CIRCLE_FILL = 0.645  # above (up to SQUARE_FILL): circle; below: triangle
# A decoded square often carries a stray pixel or two on one side (a VQ-VAE decoder artifact), which stretches its
# bounding box below SQUARE_FILL; its core, the blob without protrusions thinner than SPUR px, is read instead when
# the core keeps most of the blob (CORE_PIXELS of its pixels, CORE_SIDE of each side of its box).
SPUR = 3
CORE_PIXELS = 0.85
CORE_SIDE = 0.8


@dataclass(frozen=True)
class CheckResult:
    """What the checker read from one image; fields are None when nothing was found."""

    color: str | None
    shape: str | None
    position: str | None
    fill: float = 0.0  # fraction of the bounding box covered by the shape

    @property
    def shape_margin(self) -> float:
        """Distance of `fill` from the nearest shape threshold: small values are readings a few pixels can flip."""
        return min(abs(self.fill - SQUARE_FILL), abs(self.fill - CIRCLE_FILL))

    @property
    def combination(self) -> Combination | None:
        """(colour, shape, position), or None when any attribute is missing."""
        if self.color is None or self.shape is None or self.position is None:
            return None
        return (self.color, self.shape, self.position)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An [h, w, 3] float32 array from a PIL image or an array of uint8/float values."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)  # [3, h, w] -> [h, w, 3]
    if arr.max() <= 1.0:
        arr = arr * 255.0
    return arr


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (removes stray noise pixels)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best


def _box(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def _opened(mask: np.ndarray, k: int) -> np.ndarray:
    """Morphological opening by a k x k square: the pixels of `mask` covered by some k x k block inside it."""
    h, w = mask.shape
    pad = np.pad(mask, k - 1)
    eroded = np.ones((h + k - 1, w + k - 1), dtype=bool)  # [i, j]: the block at (i - k + 1, j - k + 1) fits
    for dy in range(k):
        for dx in range(k):
            eroded &= pad[dy : dy + h + k - 1, dx : dx + w + k - 1]
    covered = np.zeros_like(mask)  # (y, x) is covered when a fitting block starts at y - dy, x - dx
    for dy in range(k):
        for dx in range(k):
            covered |= eroded[dy : dy + h, dx : dx + w]
    return covered & mask


def _core_fill(blob: np.ndarray) -> float | None:
    """Box fill of the blob's core (see SPUR), or None when the core is not most of the blob."""
    core = _opened(blob, SPUR)
    if core.sum() < CORE_PIXELS * blob.sum():
        return None
    core = _largest_blob(core)
    (bh, bw), (ch, cw) = _box(blob), _box(core)
    if ch < CORE_SIDE * bh or cw < CORE_SIDE * bw:
        return None
    return float(core.sum() / (ch * cw))


def check_image(image: Image.Image | np.ndarray, threshold: float = 60.0) -> CheckResult:
    """Read (colour, shape, position) from one image with a plain background and one shape."""
    arr = _as_array(image)
    h, w = arr.shape[:2]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])  # [2h+2w, 3]
    background = np.median(border, axis=0)
    mask = np.linalg.norm(arr - background, axis=-1) > threshold
    if mask.sum() < 4:
        return CheckResult(None, None, None)
    full, mask = mask, _largest_blob(mask)
    mean = arr[mask].mean(axis=0)
    color = _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - mean, axis=-1)))]
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    position = ("top" if cy < h / 2 else "bottom") + " " + ("left" if cx < w / 2 else "right")
    bh, bw = _box(mask)
    fill = float(mask.sum() / (bh * bw))
    if fill <= SQUARE_FILL:
        core = _core_fill(mask)
        if core is not None and core > SQUARE_FILL and not _striped(full):  # stripes are bands by design, not spurs
            fill = core
    shape = "square" if fill > SQUARE_FILL else "circle" if fill > CIRCLE_FILL else "triangle"
    return CheckResult(color, shape, position, fill)


def score(images: Iterable[Image.Image | np.ndarray], expected: Sequence[Combination]) -> dict[str, float]:
    """Accuracy of each attribute and of all three together against the expected combinations."""
    hits = {"color": 0, "shape": 0, "position": 0, "all": 0}
    n = 0
    for image, (color, shape, position) in zip(images, expected, strict=True):
        r = check_image(image)
        ok = (r.color == color, r.shape == shape, r.position == position)
        for name, good in zip(("color", "shape", "position"), ok):
            hits[name] += int(good)
        hits["all"] += int(all(ok))
        n += 1
    return {k: v / max(n, 1) for k, v in hits.items()}


def _holes(blob: np.ndarray) -> np.ndarray:
    """Pixels outside `blob` that the image border cannot reach without crossing it (its enclosed holes)."""
    h, w = blob.shape
    outside = np.zeros_like(blob)
    stack = [(y, x) for y in range(h) for x in (0, w - 1) if not blob[y, x]]
    stack += [(y, x) for x in range(w) for y in (0, h - 1) if not blob[y, x]]
    for y, x in stack:
        outside[y, x] = True
    while stack:
        y, x = stack.pop()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and not blob[ny, nx] and not outside[ny, nx]:
                outside[ny, nx] = True
                stack.append((ny, nx))
    return ~blob & ~outside


def _close_columns(mask: np.ndarray, gap: int) -> np.ndarray:
    """`mask` with every vertical run of at most `gap` False pixels between two True pixels of a column set."""
    closed = mask.copy()
    for x in range(mask.shape[1]):
        ys = np.nonzero(mask[:, x])[0]
        for a, b in zip(ys[:-1], ys[1:]):
            if 1 < b - a <= gap + 1:
                closed[a + 1 : b, x] = True
    return closed


def _striped(mask: np.ndarray) -> bool:
    """True when the shape is drawn in horizontal bands: rows of its silhouette (the mask closed over vertical
    gaps of up to 2 line widths) where less than 30% of the silhouette is painted make >= 20% of its rows."""
    gap = 2 * outline_width(mask.shape[0])
    silhouette = _largest_blob(_close_columns(mask, gap))
    rows = np.nonzero(silhouette.any(axis=1))[0]
    painted = (mask & silhouette).sum(axis=1)[rows] / silhouette.sum(axis=1)[rows]
    blank = int((painted < 0.3).sum())
    return blank >= max(1, 0.2 * len(rows))


def check_style(image: Image.Image | np.ndarray, threshold: float = 60.0) -> str | None:
    """The drawing style of the one shape (see `synth.render`): "striped" when it is painted in horizontal bands
    (see `_striped`), "outlined" when it encloses a hole of background (>= 2 px and >= 4% of the shape),
    "filled" otherwise, None when no shape is found."""
    arr = _as_array(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])  # [2h+2w, 3]
    mask = np.linalg.norm(arr - np.median(border, axis=0), axis=-1) > threshold
    if mask.sum() < 4:
        return None
    if _striped(mask):
        return "striped"
    blob = _largest_blob(mask)
    holes = int(_holes(blob).sum())
    return "outlined" if holes >= max(2, 0.04 * (holes + int(blob.sum()))) else "filled"
