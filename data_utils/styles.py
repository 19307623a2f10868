"""Caption-free style data: every image gets the caption `template.format(style=...)` (e.g. "An image of
{style} style"), with the style named once (--style NAME) or read from the image's folder (one folder per style)."""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from typing import Iterator, Sequence

from tokenization.image_files import IMAGE_EXTENSIONS, is_image_name

from .errors import DataError
from .sources import RawItem

DEFAULT_TEMPLATE = "An image of {style} style"


@dataclass(frozen=True)
class StyleCaptions:
    """How style captions are made: one named style for all inputs, or the style folder of each image."""

    template: str = DEFAULT_TEMPLATE
    style: str | None = None  # one style for every image
    per_folder: bool = False  # the first sub-folder under each input folder names the style

    def __post_init__(self) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        if fields != ["style"]:
            raise DataError(f"--caption-template {self.template!r} must contain {{style}} exactly once and no other "
                            "{...} field, e.g. \"An image of {style} style\"")
        if (self.style is None) == (not self.per_folder):
            raise DataError("give exactly one of --style NAME (one style for all inputs) or --style-from-folders "
                            "(one sub-folder per style)")
        if self.style is not None and not self.style.strip():
            raise DataError("--style is empty; name the style, e.g. --style \"oil painting\"")

    def caption(self, style: str) -> str:
        """The caption of an image of `style`."""
        return self.template.format(style=style)

    def settings(self) -> dict[str, object]:
        """What the manifest records (so a resumed run must use the same captions)."""
        return {"caption_template": self.template, "style": self.style, "style_from_folders": self.per_folder}


def _images(folder: str) -> list[str]:
    """Image files under a folder (recursive)."""
    return [f for _, _, files in os.walk(folder) for f in files if is_image_name(f)]


def style_name(folder_name: str) -> str:
    """The style a folder names: underscores read as spaces ("oil_painting" -> "oil painting")."""
    return folder_name.replace("_", " ").strip()


def check_style_inputs(inputs: Sequence[str], styles: StyleCaptions) -> dict[str, int]:
    """Images per style; refuses inputs that are not image folders, style folders with no images, stray images."""
    counts: dict[str, int] = {}
    for path in inputs:
        if not os.path.isdir(path):
            raise DataError(f"style data must be folders of images; {path} is not a folder")
        if not styles.per_folder:
            n = len(_images(path))
            if n == 0:
                raise DataError(f"style folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)}); check the path")
            counts[str(styles.style)] = counts.get(str(styles.style), 0) + n
            continue
        entries = sorted(os.listdir(path))
        stray = [f for f in entries if os.path.isfile(os.path.join(path, f)) and is_image_name(f)]
        if stray:
            raise DataError(f"--style-from-folders: {os.path.join(path, stray[0])} is not inside a style folder; "
                            f"move the images of {path} into one sub-folder per style")
        folders = [f for f in entries if os.path.isdir(os.path.join(path, f)) and not f.startswith(".")]
        if not folders:
            raise DataError(f"--style-from-folders: {path} has no style sub-folders; make one sub-folder per style")
        for name in folders:
            n = len(_images(os.path.join(path, name)))
            if n == 0:
                raise DataError(f"style folder {os.path.join(path, name)} has no images; add images or remove it")
            counts[style_name(name)] = counts.get(style_name(name), 0) + n
    return counts


def with_style_captions(items: Iterator[RawItem], styles: StyleCaptions) -> Iterator[RawItem]:
    """The items with their captions replaced by the style caption (folder items are keyed by relative path)."""
    for item in items:
        style = styles.style if styles.style is not None else style_name(item.key.replace("\\", "/").split("/")[0])
        yield RawItem(item.key, styles.caption(str(style)), item.image_path, item.image_bytes, item.error)
