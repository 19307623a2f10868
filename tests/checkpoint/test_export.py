"""The hand-streamed safetensors export, read back by the safetensors library's own readers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from megatron_cogview.checkpoint.convert import reshard
from megatron_cogview.checkpoint.export import WEIGHTS_FILE, export_safetensors
from megatron_cogview.checkpoint.source import open_source
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.checkpoint.helpers import save_tp1, tiny

torch.set_num_threads(1)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_export_reads_back_bit_exact_with_safetensors(tmp_path: Path, dtype: torch.dtype) -> None:
    model = CogViewModel(tiny(seed=11), ParallelState.single(), dtype=dtype)
    with torch.no_grad():  # non-trivial values everywhere (fresh biases are zeros, norms ones)
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g).to(dtype))
    save_tp1(tmp_path / "tp1", model)
    reshard(open_source(tmp_path / "tp1"), tmp_path / "tp2", 2, log=lambda _: None)  # export re-assembles shards
    export_safetensors(open_source(tmp_path / "tp2"), tmp_path / "export", log=lambda _: None)
    path = str(tmp_path / "export" / WEIGHTS_FILE)

    expected = model.state_dict()
    loaded = load_file(path, device="cpu")
    assert sorted(loaded) == sorted(expected)
    for name, value in expected.items():
        got = loaded[name]
        assert got.dtype == dtype and got.shape == value.shape, name
        assert torch.equal(_bits(got), _bits(value)), name
    with safe_open(path, framework="pt", device="cpu") as f:
        assert f.metadata() == {"format": "pt", "producer": "megatron-cogview"}
        assert sorted(f.keys()) == sorted(expected)
        name = "transformer.layers.1.attention.query_key_value.weight"  # stride-3 shards merged back
        assert torch.equal(_bits(f.get_tensor(name)), _bits(expected[name]))
        assert f.get_slice(name).get_shape() == list(expected[name].shape)
