"""find_images (--data of train-vqvae): the images, their order and the errors of the trainer's former readers."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from data_utils.errors import DataError
from data_utils.image_sources import find_images, walk_images
from megatron_cogview.cli import main
from tokenization.image_files import ImageSource


def _tar(path: Path, names: list[str]) -> None:
    """An uncompressed tar of `names` (a trailing '/' makes a directory entry), each file holding 10 bytes."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 10
                tar.addfile(info, io.BytesIO(b"0123456789"))


def _folder(root: Path) -> Path:
    folder = root / "imgs"
    for name in ("z.png", "a.jpg", "b.png", "b/c.PNG", "b/notes.txt", "b/e/f.webp", "photo.jpg/x.gif"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    os.symlink(folder / "missing.png", folder / "broken.png")  # not a regular file: never listed
    return folder


def test_sources_and_their_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\n{folder / 'z.png'}\n\nimgs/a.jpg\tcaption\n  imgs/b.png  \n", encoding="utf-8")
    # header blocks: 512 bytes each; 10-byte files take one more 512-byte block
    _tar(tmp_path / "one.tar", ["k1.jpg", "k1.txt", "k1.png", "sub/", "sub/k1.png", "k2.PNG", "k3.json"])
    for i in (8, 9, 10):
        _tar(tmp_path / f"shard-{i:02d}.tar", [f"s{i}.txt", f"s{i}.jpg"])
    data = [str(folder), str(listing), str(tmp_path / "one.tar"), str(tmp_path / "shard-{08..10}.tar")]
    root = str(tmp_path)
    assert find_images(data) == [
        # a folder: sorted by path components (b/... before b.png), the broken link left out
        ImageSource(f"{root}/imgs/a.jpg"),
        ImageSource(f"{root}/imgs/b/c.PNG"),
        ImageSource(f"{root}/imgs/b/e/f.webp"),
        ImageSource(f"{root}/imgs/b.png"),
        ImageSource(f"{root}/imgs/photo.jpg/x.gif"),
        ImageSource(f"{root}/imgs/z.png"),
        # a list: absolute paths kept, relative ones joined to the list's folder, TAB tails and comments dropped
        ImageSource(f"{root}/imgs/z.png"),
        ImageSource(f"{root}/imgs/a.jpg"),
        ImageSource(f"{root}/imgs/b.png"),
        # a tar: the first image per (folder, key), as byte ranges
        ImageSource(f"{root}/one.tar", 512, 10),
        ImageSource(f"{root}/one.tar", 4096, 10),
        ImageSource(f"{root}/one.tar", 5120, 10),
        # a brace pattern of tars, zero padding kept
        ImageSource(f"{root}/shard-08.tar", 1536, 10),
        ImageSource(f"{root}/shard-09.tar", 1536, 10),
        ImageSource(f"{root}/shard-10.tar", 1536, 10),
    ]
    # preprocess walks the same folder directory by directory (its files first); it reports the broken link
    assert [p[len(root) + 1 :] for p in walk_images(str(folder))] == [
        "imgs/a.jpg", "imgs/b.png", "imgs/broken.png", "imgs/z.png", "imgs/b/c.PNG", "imgs/b/e/f.webp",
        "imgs/photo.jpg/x.gif",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "not found; pass a folder of images, an image-list file or .tar shards"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no images (jpg, jpeg, png, webp, bmp, gif)"),
        (lambda d: (d / "x.csv").write_text("") or d / "x.csv", "unknown kind of file"),
        (lambda d: (d / "x.tar.gz").write_bytes(b"") or d / "x.tar.gz", "is compressed; train-vqvae reads"),
        (lambda d: ((d / "bad.tar").write_bytes(b"x" * 700), d / "bad.tar")[1], "is it a complete, uncompressed tar?"),
    ],
)
def test_bad_data_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message) -> None:  # noqa: ANN001
    path = str(make(tmp_path))
    with pytest.raises(DataError, match="holds no|not found|unknown|compressed|cannot read"):
        find_images([path])
    out = tmp_path / "out"
    assert main(["tokenizer", "train-vqvae", "--data", path, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()
