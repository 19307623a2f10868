"""The `shapes` feature extractor: a small CNN trained on the built-in synthetic shapes (FID offline, no download).

It reads colour, shape and position with three heads; its 64-d penultimate layer gives the FID features and
the product of the three heads gives p(combination) over the 72 (colour, shape, position) classes for the
Inception Score. Trained in seconds on CPU from freshly rendered synthetic images (disjoint from any split).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from data_utils.synth import COLORS, POSITIONS, SHAPES, render, sample_attributes
from megatron_cogview.config import ConfigError

Log = Callable[[str], None]
HEADS = (len(COLORS), len(SHAPES), len(POSITIONS))
FEATURE_DIM = 64
TRAIN_SEED = 977  # a synthetic stream separate from the demo's data seeds


class ShapesNet(nn.Module):
    """conv x3 (16/32/32 channels, 32 -> 4 px) -> 64-d features -> colour / shape / position logits."""

    def __init__(self, image_size: int = 32) -> None:
        super().__init__()
        self.image_size = image_size
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(32 * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, n) for n in HEADS)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> float [N, 3, s, s] in [-1, 1] at the net's resolution."""
        x = images.float() / 127.5 - 1.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features [N, 64], [colour, shape, position] logits) of uint8 images."""
        h = self.body(self.prepare(images))
        return h, [head(h) for head in self.heads]

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 64], p(combination) [N, 72]) of uint8 images [N, 3, H, W]."""
        feats, logits = self(images)
        c, s, p = (torch.softmax(x.double(), -1) for x in logits)
        joint = c[:, :, None, None] * s[:, None, :, None] * p[:, None, None, :]
        return feats, joint.reshape(images.size(0), -1).float()


def _batch(indices: range, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for i in indices:
        s = sample_attributes(i, TRAIN_SEED)
        images.append(np.asarray(render(s, image_size)))
        labels.append((list(COLORS).index(s.color), list(SHAPES).index(s.shape), list(POSITIONS).index(s.position)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)


def train_shapes_net(image_size: int = 32, steps: int = 300, batch: int = 64, seed: int = 0,
                     log: Log = lambda m: None) -> ShapesNet:
    """Train a ShapesNet on freshly rendered synthetic images; returns it in eval mode."""
    torch.manual_seed(seed)
    net = ShapesNet(image_size)
    opt = torch.optim.Adam(net.parameters(), lr=4e-3)
    for step in range(steps):
        x, y = _batch(range(step * batch, (step + 1) * batch), image_size)
        _, logits = net(x)
        loss = sum(nn.functional.cross_entropy(lg, y[:, k]) for k, lg in enumerate(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"shapes extractor step {step + 1}/{steps}: loss {float(loss.detach()):.3f}")
    return net.eval()


def shapes_accuracy(net: ShapesNet, num: int = 512, image_size: int = 32) -> float:
    """Fraction of fresh synthetic images (not trained on) whose three attributes the net reads right."""
    x, y = _batch(range(10**7, 10**7 + num), image_size)
    with torch.no_grad():
        _, logits = net(x)
    pred = torch.stack([lg.argmax(-1) for lg in logits], 1)
    return float((pred == y).all(1).float().mean())


def save_shapes_net(net: ShapesNet, path: str | Path) -> None:
    """Write the weights (safetensors) and a JSON sidecar with the image size, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    path.with_suffix(".json").write_text(json.dumps({"image_size": net.image_size, "feature_dim": FEATURE_DIM}))
    tmp.replace(path)


def load_shapes_net(path: str | Path) -> ShapesNet:
    """Load a ShapesNet written by save_shapes_net; one clear error for a missing or foreign file."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise ConfigError(f"shapes extractor {str(path)!r} (and its .json) not found; omit --shapes-model to train "
                          "one, or pass the file an earlier run wrote")
    net = ShapesNet(int(json.loads(meta.read_text())["image_size"]))
    try:
        net.load_state_dict(load_file(str(path)))
    except Exception as e:  # wrong keys/shapes or not a safetensors file
        raise ConfigError(f"{str(path)!r} is not a shapes extractor: {str(e).splitlines()[0]}") from None
    return net.eval()


def shapes_net(path: str | Path, image_size: int = 32, log: Log = lambda m: None) -> ShapesNet:
    """The extractor at `path`: loaded when it exists, else trained (seconds on CPU) and saved there."""
    if Path(path).is_file():
        return load_shapes_net(path)
    log(f"training the shapes feature extractor -> {path}")
    net = train_shapes_net(image_size, log=log)
    log(f"shapes extractor reads {100 * shapes_accuracy(net, image_size=image_size):.1f}% of fresh images right")
    save_shapes_net(net, path)
    return net
