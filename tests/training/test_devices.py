"""The runtime device: one function decides it (honouring DS_ACCELERATOR), LOCAL_RANK is checked, the RNG
tracker follows the model."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import ConfigError, model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from megatron_cogview.parallel.random import REPLICATED, RNGTracker
from megatron_cogview.parallel.state import default_device
from megatron_cogview.training.engine import init_distributed


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_ds_accelerator_cpu_pins_the_process_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert default_device() == torch.device("cuda", 0)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert default_device() == torch.device("cpu")


def test_local_rank_beyond_the_visible_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device must not be reached"))
    with pytest.raises(ConfigError, match=r"LOCAL_RANK is 3 but this node shows 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=0,1\)"):
        init_distributed()


def test_rng_tracker_moves_with_its_streams() -> None:
    tracker = RNGTracker.for_model(7, ParallelState.single())
    torch.rand(3, generator=tracker.generator(REPLICATED))  # advance the stream
    moved = tracker.to("cpu")
    assert torch.equal(torch.rand(4, generator=moved.generator(REPLICATED)),
                       torch.rand(4, generator=tracker.generator(REPLICATED)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_model_moved_to_the_gpu_takes_its_rng_tracker_along() -> None:
    cfg = model_preset("tiny").__class__.from_dict({**model_preset("tiny").to_dict(), "hidden_dropout": 0.1})
    moved = CogViewModel(cfg, ParallelState.single()).cuda().train()
    built = CogViewModel(cfg, ParallelState.single(), device="cuda").train()
    assert moved.rng.device.type == "cuda"
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), device="cuda")
    labels = torch.randint(0, cfg.vocab_size, (2, 16), device="cuda")
    a = moved.lm_loss(tokens, labels, torch.ones(2, 16, device="cuda")).total
    b = built.lm_loss(tokens, labels, torch.ones(2, 16, device="cuda")).total
    torch.testing.assert_close(a, b)  # same weights, same dropout streams from the same seeds
