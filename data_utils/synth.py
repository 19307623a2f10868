"""Built-in synthetic dataset: one coloured shape per image, captioned in English or Chinese."""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from .errors import DataError
from .progress import progress

SHAPES: dict[str, str] = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 160, 30),
    "blue": (20, 50, 220),
    "yellow": (235, 205, 0),
    "purple": (140, 30, 170),
    "black": (20, 20, 20),
}
COLORS_ZH: dict[str, str] = {
    "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "black": "黑色",
}
POSITIONS: dict[str, str] = {
    "top left": "左上角", "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角",
}
SIZES: dict[str, float] = {"small": 0.45, "large": 0.75}  # shape side as a fraction of the quadrant side
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255), (228, 228, 228), (246, 236, 212), (214, 232, 246), (246, 222, 228),
)
LANGS = ("en", "zh")
SPLIT_FILE = "splits.json"
TRAIN_FILE = "captions.jsonl"
HELDOUT_FILE = "heldout.jsonl"

Combination = tuple[str, str, str]  # (color, shape, position)


def caption_for(color: str, shape: str, position: str, lang: str = "en") -> str:
    """The caption of one (colour, shape, position) combination in `lang` ('en' or 'zh')."""
    if lang == "en":
        return f"a {color} {shape} at the {position}"
    if lang == "zh":
        return f"{POSITIONS[position]}有一个{COLORS_ZH[color]}的{SHAPES[shape]}"
    raise DataError(f"unknown caption language {lang!r}; use one of {', '.join(LANGS)}")


def combination_for_caption(caption: str) -> Combination | None:
    """The combination a caption of caption_for (any language) describes; None for any other text."""
    return _CAPTION_COMBINATIONS.get(caption.strip())


@dataclass(frozen=True)
class ShapeSample:
    """The attributes of one synthetic image (everything needed to render it again)."""

    index: int
    color: str
    shape: str
    position: str
    size: str
    background: int
    offset: tuple[float, float]  # jitter inside the free room of the quadrant, each in [0, 1)

    @property
    def combination(self) -> Combination:
        """The (colour, shape, position) triple that captions describe."""
        return (self.color, self.shape, self.position)

    def caption(self, lang: str = "en") -> str:
        """This sample's caption in `lang`."""
        return caption_for(self.color, self.shape, self.position, lang)


def all_combinations() -> list[Combination]:
    """Every (colour, shape, position) triple, in a fixed order."""
    return list(itertools.product(COLORS, SHAPES, POSITIONS))


_CAPTION_COMBINATIONS: dict[str, Combination] = {
    caption_for(*c, lang=lang): c for c in all_combinations() for lang in LANGS
}


def _pairs_covered(combos: list[Combination]) -> bool:
    """True when every attribute pair (colour-shape, colour-position, shape-position) occurs."""
    need = {(i, j) for i in range(3) for j in range(i + 1, 3)}
    for i, j in need:
        seen = {(c[i], c[j]) for c in combos}
        pools = (list(COLORS), list(SHAPES), list(POSITIONS))
        if len(seen) != len(pools[i]) * len(pools[j]):
            return False
    return True


def heldout_combinations(seed: int = 0, num: int = 10) -> list[Combination]:
    """`num` combinations kept out of training, chosen so every attribute pair is still trained on."""
    combos = all_combinations()
    if not 0 <= num <= len(combos) // 4:
        raise DataError(f"--num-heldout {num} is out of range; use 0..{len(combos) // 4}")
    rng = np.random.default_rng([seed, 7])
    chosen: list[Combination] = []
    for idx in rng.permutation(len(combos)):
        if len(chosen) == num:
            break
        candidate = combos[int(idx)]
        rest = [c for c in combos if c not in chosen and c != candidate]
        if _pairs_covered(rest):
            chosen.append(candidate)
    return sorted(chosen)


def sample_attributes(index: int, seed: int = 0) -> ShapeSample:
    """The attributes of sample `index`; depends only on (seed, index)."""
    rng = np.random.default_rng([seed, index])
    color, shape, position, size = (
        list(pool)[int(rng.integers(len(pool)))] for pool in (COLORS, SHAPES, POSITIONS, SIZES)
    )
    background = int(rng.integers(len(BACKGROUNDS)))
    offset = (float(rng.random()), float(rng.random()))
    return ShapeSample(index, color, shape, position, size, background, offset)


def shape_box(sample: ShapeSample, image_size: int) -> tuple[int, int, int]:
    """(x, y, side) of the shape's bounding box in pixels."""
    half = image_size // 2
    side = max(3, round(SIZES[sample.size] * half))
    room = max(0, half - side - 2)  # keep one pixel clear of the quadrant edges
    qx = half if sample.position.endswith("right") else 0
    qy = half if sample.position.startswith("bottom") else 0
    x = qx + 1 + int(sample.offset[0] * (room + 1))
    y = qy + 1 + int(sample.offset[1] * (room + 1))
    return x, y, side


RENDER_STYLES = ("filled", "outlined", "striped")
NEW_STYLES = RENDER_STYLES[1:]  # styles pre-training never shows the transformer (style fine-tuning demos)


def outline_width(image_size: int) -> int:
    """Line width of the outlined style and stripe width of the striped style: 2 px at 32 px, scaled."""
    return max(2, round(image_size / 16))


def render(sample: ShapeSample, image_size: int = 32, style: str = "filled") -> Image.Image:
    """Draw `sample` as an RGB image of `image_size` x `image_size` pixels: filled, outlined only, or striped
    (filled, with every other band of `outline_width` rows left blank; bands counted from the image's top row)."""
    if image_size < 16:
        raise DataError(f"--image-size {image_size} is too small; use 16 or more")
    if style not in RENDER_STYLES:
        raise DataError(f"unknown shape style {style!r}; use one of {', '.join(RENDER_STYLES)}")
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[sample.background])
    draw = ImageDraw.Draw(image)
    x, y, side = shape_box(sample, image_size)
    colour = COLORS[sample.color]
    paint = {"outline": colour, "width": outline_width(image_size)} if style == "outlined" else {"fill": colour}
    x1, y1 = x + side - 1, y + side - 1
    if sample.shape == "circle":
        draw.ellipse([x, y, x1, y1], **paint)
    elif sample.shape == "square":
        draw.rectangle([x, y, x1, y1], **paint)
    elif style != "outlined":
        draw.polygon([(x + (side - 1) / 2, y), (x, y1), (x1, y1)], fill=colour)
    else:  # PIL's polygon has no line width: draw the closed path as lines
        points = [(x + (side - 1) / 2, y), (x1, y1), (x, y1), (x + (side - 1) / 2, y)]
        draw.line(points, fill=colour, width=outline_width(image_size), joint="curve")
    if style == "striped":
        pixels = np.array(image)
        blank = (np.arange(image_size) // outline_width(image_size)) % 2 == 1  # [rows]
        shape = np.all(pixels == colour, axis=-1) & blank[:, None]
        pixels[shape] = BACKGROUNDS[sample.background]
        image = Image.fromarray(pixels)
    return image


def iter_samples(num: int, seed: int = 0, start: int = 0) -> Iterator[ShapeSample]:
    """Samples `start` .. `start + num - 1` of the stream for `seed`."""
    for index in range(start, start + num):
        yield sample_attributes(index, seed)


@dataclass(frozen=True)
class SynthSummary:
    """What `write_synth` produced."""

    out: str
    num_train: int
    num_heldout: int
    heldout: list[Combination]


def _record(sample: ShapeSample, image_rel: str, lang: str) -> dict:
    """One JSONL line describing a written sample."""
    return {
        "key": f"{sample.index:08d}",
        "image": image_rel,
        "caption": sample.caption(lang),
        "caption_en": sample.caption("en"),
        "caption_zh": sample.caption("zh"),
        "color": sample.color,
        "shape": sample.shape,
        "position": sample.position,
        "size": sample.size,
    }


def write_synth(
    out: str, num: int, image_size: int = 32, seed: int = 0, lang: str = "en", num_heldout: int = 10,
    style: str = "filled",
) -> SynthSummary:
    """Write `num` PNGs, `captions.jsonl` (training pairs), `heldout.jsonl` and `splits.json` into `out`."""
    if num <= 0:
        raise DataError(f"--num {num} must be positive")
    if lang not in LANGS:
        raise DataError(f"unknown --lang {lang!r}; use one of {', '.join(LANGS)}")
    if style not in RENDER_STYLES:
        raise DataError(f"unknown --shape-style {style!r}; use one of {', '.join(RENDER_STYLES)}")
    heldout = heldout_combinations(seed, num_heldout)
    held = set(heldout)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    counts = {"train": 0, "heldout": 0}
    with open(os.path.join(out, TRAIN_FILE), "w", encoding="utf-8") as train_f, open(
        os.path.join(out, HELDOUT_FILE), "w", encoding="utf-8"
    ) as held_f, progress(num, "synth", "img") as bar:
        for sample in iter_samples(num, seed):
            rel = os.path.join("images", f"{sample.index:08d}.png")
            render(sample, image_size, style).save(os.path.join(out, rel))
            split = "heldout" if sample.combination in held else "train"
            counts[split] += 1
            f = held_f if split == "heldout" else train_f
            f.write(json.dumps(_record(sample, rel, lang), ensure_ascii=False) + "\n")
            bar.update(1)
    meta = {
        "seed": seed, "num": num, "image_size": image_size, "lang": lang, "style": style,
        "heldout": [dict(zip(("color", "shape", "position"), c)) for c in heldout],
        "counts": counts, "colors": list(COLORS), "shapes": list(SHAPES), "positions": list(POSITIONS),
    }
    with open(os.path.join(out, SPLIT_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    return SynthSummary(out, counts["train"], counts["heldout"], heldout)


def load_heldout(split_file: str) -> list[Combination]:
    """The held-out combinations recorded in a `splits.json`."""
    try:
        with open(split_file, encoding="utf-8") as f:
            meta = json.load(f)
        return [(c["color"], c["shape"], c["position"]) for c in meta["heldout"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read held-out combinations from {split_file} ({e}); run `cogview synth` first") from e
