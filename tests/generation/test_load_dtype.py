"""Loading for generation: the model is built on the meta device (no random init) and takes --dtype."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_cogview.checkpoint.load import load_model
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.checkpoint.helpers import save_tp1, tiny, tokens


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CogViewModel]:
    save = tmp_path_factory.mktemp("ckpt")
    model = CogViewModel(tiny(), ParallelState.single()).eval()
    save_tp1(save, model)
    return save, model


def test_load_builds_on_meta_without_random_init(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    save, ref = saved
    drawn: list[torch.Size] = []
    real_normal = torch.Tensor.normal_

    def spy(self: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.device.type != "meta":
            drawn.append(self.shape)
        return real_normal(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", spy)
    model, _ = load_model(save, ParallelState.single())
    monkeypatch.undo()
    assert drawn == [], f"random init of {len(drawn)} tensors before the weights were loaded"
    assert all(p.device.type == "cpu" for p in model.parameters()) and model.rng.device.type == "cpu"
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    x = tokens(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=0, atol=0)


def test_load_in_bf16(saved) -> None:
    save, ref = saved
    model, _ = load_model(save, ParallelState.single(), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    x = tokens(model.config.vocab_size)
    with torch.no_grad():
        got, want = model.eval()(x).float(), ref(x)
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 weights: ~3 significant digits


def test_generate_cli_takes_dtype() -> None:
    from megatron_cogview.cli import build_parser

    args = build_parser().parse_args(["generate", "text2image", "--load", "x", "--prompt", "a", "--dtype", "bf16"])
    assert args.dtype == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "text2image", "--load", "x", "--prompt", "a", "--dtype", "int8"])
