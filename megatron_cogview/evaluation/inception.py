"""The FID Inception-v3 (TF-ported weights, as pytorch-fid / torch-fidelity / torchmetrics use), read from disk.

The network comes from torch-fidelity (the maintained package torchmetrics also builds on). Its package
`__init__` imports torchvision, which does not import beside this project's torch, while the Inception module
itself needs only torch; so the module is loaded under a bare package entry that skips that `__init__`.
Weights are never downloaded: the user names the file (torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, from its GitHub release v0.2.0).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

from megatron_cogview.config import ConfigError

WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SOURCE = f"torch-fidelity's GitHub release v0.2.0 ({WEIGHTS_NAME}, 91 MB)"
INSTALL_HINT = "install it with `bash scripts/install.sh eval` (torch-fidelity without its torchvision requirement)"


def _inception_class() -> Any:
    """torch_fidelity's FeatureExtractorInceptionV3, without running torch_fidelity/__init__ (torchvision)."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    if name in sys.modules:
        return sys.modules[name].FeatureExtractorInceptionV3
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"--features inception needs the torch-fidelity package; {INSTALL_HINT}")
    added = "torch_fidelity" not in sys.modules
    if added:  # a bare package object: submodules import from its folder, its __init__ never runs
        package = types.ModuleType("torch_fidelity")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module(name).FeatureExtractorInceptionV3
    except ImportError as e:
        raise ConfigError(f"cannot load torch-fidelity's Inception-v3 ({e}); {INSTALL_HINT}") from None
    finally:
        if added:  # leave no half-initialised package behind for a later `import torch_fidelity`
            sys.modules.pop("torch_fidelity", None)


def random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised state dict with the FID Inception's shapes (for benchmarks and tests)."""
    cls = _inception_class()

    class _Random(cls):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # keep the random init
            return None

    path = Path(path)
    torch.manual_seed(seed)
    empty = path.with_name(path.name + ".empty")
    torch.save({}, empty)
    try:
        net = _Random("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        empty.unlink()
    torch.save(nn_state(net), path)
    return path


def nn_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} state dict."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features and softmax(logits_unbiased) class probabilities of uint8 images [N, 3, H, W]."""

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"Inception weights file {str(path)!r} not found; download {WEIGHTS_SOURCE} "
                              "on a machine with network access and pass its path to --inception-weights")
        try:  # a safe load first: tensors only, no pickled code
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"cannot read Inception weights {str(path)!r}: {str(e).splitlines()[0]}") from None
        if not isinstance(state, dict) or not state:
            raise ConfigError(f"{str(path)!r} is not a state dict; expected {WEIGHTS_NAME}")
        cls = _inception_class()
        try:
            self.net = cls("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
        except RuntimeError as e:  # missing/unexpected keys, wrong shapes
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise ConfigError(f"{str(path)!r} does not hold the FID Inception-v3 weights ({first}); expected "
                              f"{WEIGHTS_NAME}") from None

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 2048], p(class) [N, 1008]) of uint8 images (resized to 299 px inside, TF-style)."""
        feats, logits = self.net(images)
        return feats, torch.softmax(logits.double(), -1).float()
