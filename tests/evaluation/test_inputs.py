"""Evaluation inputs and extractors: bad input is one clear ConfigError; set selection and scoring rules."""
from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from megatron_cogview.config import ConfigError
from megatron_cogview.evaluation.references import read_references, synthetic_combination
from megatron_cogview.evaluation.scoring import Draw, score, select_sets
from megatron_cogview.evaluation.shapes import ShapesNet, load_shapes_net, save_shapes_net


def _png(path: Path, color: tuple[int, int, int] = (200, 10, 10), size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size + 4), color).save(path)


def test_jsonl_folder_and_synthetic_captions(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "im" / f"{i}.png", (10 * i, 0, 0))
    rows = [{"image": "im/0.png", "caption": "a red circle at the top left"},
            {"image": "im/1.png", "caption": "a red circle at the top left"},
            {"image": "im/2.png", "caption": "左上角有一个蓝色的正方形"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    refs = read_references([str(tmp_path / "pairs.jsonl")], 16)
    assert refs.captions == ["a red circle at the top left", "左上角有一个蓝色的正方形"]
    assert refs.combinations == [("red", "circle", "top left"), ("blue", "square", "top left")]
    assert refs.images.shape == (3, 3, 16, 16) and refs.images.dtype == torch.uint8
    (tmp_path / "im" / "0.txt").write_text("a photo of a cat")
    (tmp_path / "im" / "1.txt").write_text("a red circle at the top left")
    folder = read_references([str(tmp_path / "im")], 16, max_references=2)
    assert folder.combinations is None and folder.captions == ["a photo of a cat", "a red circle at the top left"]
    assert folder.images.size(0) == 2
    assert synthetic_combination("a cat") is None


@pytest.mark.parametrize("case", ["empty", "missing_image", "no_images", "tar_without_image", "no_captions"])
def test_bad_inputs_are_one_clear_error(tmp_path: Path, case: str) -> None:
    target = tmp_path / "in.jsonl"
    if case == "empty":
        target.write_text("")
        match = "holds no .caption, image. pairs"
    elif case == "missing_image":
        _png(tmp_path / "a.png")
        target.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n"
                          + json.dumps({"image": "gone.png", "caption": "a caption"}) + "\n")
        match = "caption 'a caption' has no image: .*gone.png does not exist"
    elif case == "no_images":
        target = tmp_path / "folder"
        target.mkdir()
        (target / "a.txt").write_text("a caption without its image")
        match = "holds no .caption, image. pairs"
    elif case == "tar_without_image":
        target = tmp_path / "shard.tar"
        with tarfile.open(target, "w") as tar:
            data = b"a caption"
            info = tarfile.TarInfo("000001.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        match = "has no image file"
    else:
        for i in range(2):
            _png(tmp_path / f"{i}.png")
        target.write_text("\n".join(json.dumps({"image": f"{i}.png", "caption": ""}) for i in range(2)))
        match = "no captions to prompt with"
    with pytest.raises(ConfigError, match=match) as e:
        read_references([str(target)], 16)
    assert "\n" not in str(e.value)


def test_select_sets_and_score_rules(tmp_path: Path) -> None:
    """Groups of R draws: reranked keeps each group's lowest CapLoss, one-sample FID uses each group's first."""
    colors = [(220, 20, 20), (20, 50, 220)]
    draws = []
    for c in range(2):
        for j in range(6):
            f = tmp_path / f"{c}_{j}.png"
            _png(f, colors[(c + j) % 2], 16)
            draws.append(Draw(c, j, f, caption_loss=float((j * 7 + c) % 5)))
    sets = select_sets(draws, rerank=3)
    assert [(d.caption, d.sample) for d in sets["one_sample_first"]] == [(0, 0), (0, 3), (1, 0), (1, 3)]
    for d in sets["reranked"]:
        group = [x for x in draws if x.caption == d.caption and x.sample // 3 == d.sample // 3]
        assert d.caption_loss == min(x.caption_loss for x in group)  # type: ignore[type-var]

    class MeanColour:
        def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = images.float().mean((2, 3)) + torch.arange(images.size(0)).unsqueeze(1) * 1e-3
            return f, torch.softmax(f, -1)

    refs = torch.stack([torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16) for c in colors * 4])
    want = [("red", "circle", "top left"), ("blue", "circle", "top left")]
    rows = score(draws, 3, refs, MeanColour(), radii=(0, 2), combos=want,
                 checker=lambda im: ("red" if im.getpixel((0, 0))[0] > 100 else "blue", "circle", "top left"))
    one, best = rows["one_sample"], rows["reranked"]
    assert one["images"] == best["images"] == 4 and one["trials"] == 12 and best["trials"] == 4
    assert one["accuracy"] == pytest.approx(0.5) and one["correct"] == 6
    assert best["caption_loss"] <= one["caption_loss"]
    assert one["caption_loss"] == pytest.approx(sum(d.caption_loss for d in draws) / 12)  # type: ignore[misc]
    assert {"fid_0", "fid_2", "is_mean", "is_std", "accuracy_ci95"} <= set(one)
    no_cap = [Draw(d.caption, d.sample, d.file, None) for d in draws]
    assert set(score(no_cap, 1, refs, None)) == {"one_sample"}


def test_shapes_net_save_load_roundtrip_and_foreign_file(tmp_path: Path) -> None:
    net = ShapesNet(32).eval()
    save_shapes_net(net, tmp_path / "s.safetensors")
    back = load_shapes_net(tmp_path / "s.safetensors")
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    f1, p1 = net.extract(x)
    f2, p2 = back.extract(x)
    assert torch.equal(f1, f2) and p1.shape == (2, 72)
    torch.testing.assert_close(p1.sum(-1), torch.ones(2))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    (tmp_path / "bad.json").write_text(json.dumps({"image_size": 32}))
    with pytest.raises(ConfigError, match="is not a shapes extractor"):
        load_shapes_net(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        load_shapes_net(tmp_path / "missing.safetensors")


needs_fidelity = pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None,
                                    reason="torch-fidelity not installed (bash scripts/install.sh dev)")


@needs_fidelity
def test_inception_weights_missing_wrong_and_random(tmp_path: Path) -> None:
    from megatron_cogview.evaluation.inception import WEIGHTS_NAME, InceptionFeatures, random_inception_weights

    with pytest.raises(ConfigError, match=f"not found; download .*{WEIGHTS_NAME}") as e:
        InceptionFeatures(tmp_path / "nope.pth")
    assert "\n" not in str(e.value)
    good = random_inception_weights(tmp_path / "random.pth")
    state = torch.load(good, weights_only=True)
    state["fc.weight"] = state["fc.weight"][:10]
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match="does not hold the FID Inception-v3 weights .*fc.weight") as e:
        InceptionFeatures(tmp_path / "wrong.pth")
    assert "\n" not in str(e.value)
    feats, probs = InceptionFeatures(good).extract(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and probs.shape == (2, 1008)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
