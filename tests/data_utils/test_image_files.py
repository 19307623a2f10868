"""One image-extension list: the preprocess readers and the VQ-VAE trainer pick the same files."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from data_utils.image_sources import find_images
from data_utils.sources import iter_inputs
from tokenization.image_files import IMAGE_EXTENSIONS, is_image_name

NAMES = [f"a{i}.{ext}" for i, ext in enumerate(IMAGE_EXTENSIONS)] + ["UPPER.JPG", "notes.txt", "meta.json", "png", "x.tar.gz"]


def test_is_image_name() -> None:
    assert [n for n in NAMES if is_image_name(n)] == NAMES[: len(IMAGE_EXTENSIONS) + 1]


def test_folder_readers_agree(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).write_bytes(b"")  # readers select by name; decoding happens later
    preprocess = sorted(Path(item.image_path).name for item in iter_inputs([str(tmp_path)]))
    vqvae = sorted(Path(src.path).name for src in find_images([str(tmp_path)]))
    assert preprocess == vqvae == sorted(NAMES[: len(IMAGE_EXTENSIONS) + 1])


def test_tar_readers_agree(tmp_path: Path) -> None:
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for i, ext in enumerate(IMAGE_EXTENSIONS):
            for name, data in ((f"k{i}.{ext}", f"image {i}".encode()), (f"k{i}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    preprocess = [item for item in iter_inputs([str(shard)]) if item.error is None]
    assert [item.image_bytes for item in preprocess] == [f"image {i}".encode() for i in range(len(IMAGE_EXTENSIONS))]
    assert len(find_images([str(shard)])) == len(IMAGE_EXTENSIONS)
