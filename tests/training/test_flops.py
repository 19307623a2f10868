"""MFU inputs: the FLOP count per token against a hand count, the peak table, time outside the window."""
from __future__ import annotations

import pytest

from megatron_cogview.config import model_preset
from megatron_cogview.training import loop
from megatron_cogview.training.flops import flops_per_token, peak_tflops


def test_flops_per_token_of_the_4b_preset_matches_a_hand_count() -> None:
    # CogView 4B: L=48, h=2560, ffn=4h=10240, V=58240; a full 1088-token input (1089 positions - 1).
    # Forward per layer per token: QKV 2*2560*7680 = 39,321,600; attention output 2*2560^2 = 13,107,200;
    # MLP 2*2*2560*10240 = 104,857,600; scores + weighted sum 2*2*1088*2560 = 11,141,120
    # -> 168,427,520 per layer, x48 = 8,084,520,960; output embedding 2*2560*58240 = 298,188,800;
    # forward 8,382,709,760; x3 (forward + backward) = 25,148,129,280.
    cfg = model_preset("cogview-4b")
    assert flops_per_token(cfg, 1088) == 25_148_129_280
    # Same number as 6N + 12*L*h*s with N = 12*L*h^2 + V*h (the usual closed form, ffn = 4h).
    n = 12 * 48 * 2560**2 + 58240 * 2560
    assert flops_per_token(cfg, 1088) == 6 * n + 12 * 48 * 2560 * 1088
    # The real sequence length of the batch and the configured MLP width enter the count.
    assert flops_per_token(cfg, 1088) - flops_per_token(cfg, 544) == 3 * 48 * 4 * 544 * 2560
    narrow = model_preset("cogview-4b", ffn_hidden_size=8192)
    assert flops_per_token(cfg, 1088) - flops_per_token(narrow, 1088) == 3 * 48 * 4 * 2560 * (10240 - 8192)


def test_peak_table_uses_exact_names_and_the_override() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA H100 NVL", "bf16") == pytest.approx(835.0)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(156.0)  # TF32
    assert peak_tflops("NVIDIA H100 Something New", "bf16") is None  # no substring guessing
    assert peak_tflops("NVIDIA H100 Something New", "bf16", override=500.0) == 500.0


def test_validation_and_saves_are_outside_the_throughput_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    window = loop.Window(start=clock[0])

    def slow_save() -> None:
        clock[0] += 42.0

    loop.Trainer._outside_window(window, slow_save)
    assert window.start == 142.0  # the 42 s save does not count as training time
