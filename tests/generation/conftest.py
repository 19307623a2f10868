"""Shared fixtures: one thread per test process (2 shared cores), a tiny random CogView model."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState

IMAGE = (0, 256)  # image ids of the tiny test layout
TEXT = (256, 960)  # text ids; commands above


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> CogViewModel:
    return CogViewModel(model_preset("tiny"), ParallelState.single()).eval()
