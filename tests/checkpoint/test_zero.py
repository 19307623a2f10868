"""ZeRO consolidation on real DeepSpeed ZeRO-2 checkpoints, fp32 and bf16 (CPU accelerator, gloo, spawned ranks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_cogview.checkpoint.convert import consolidate, reshard
from megatron_cogview.checkpoint.layout import CheckpointError, iteration_dir, model_states_file, read_meta
from megatron_cogview.checkpoint.reshard import split_rules
from megatron_cogview.checkpoint.source import open_source
from megatron_cogview.parallel import unshard
from tests.checkpoint.helpers import tiny
from tests.distributed import run_distributed

torch.set_num_threads(1)
STEPS = 2


def _zero_checkpoint(root: Path, tp: int, dp: int, precision: str = "fp32") -> Path:
    from tests.checkpoint.ds_zero import write_zero_checkpoint

    save = root / f"zero_tp{tp}_dp{dp}"
    run_distributed(write_zero_checkpoint, tp * dp, tiny().to_dict(), tp, 2, str(save), STEPS, precision, timeout=300)
    return save


def _module(save: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(model_states_file(save, STEPS, rank), weights_only=True)["module"]


@pytest.mark.parametrize("tp,precision", [(1, "bf16"), (2, "fp32")])
def test_zero2_dp2_consolidates_to_the_engine_parameters(tmp_path: Path, tp: int, precision: str) -> None:
    zero = _zero_checkpoint(tmp_path, tp, 2, precision)
    prefix = "bf16_" if precision == "bf16" else ""
    assert len(list(iteration_dir(zero, STEPS).glob(f"{prefix}zero_pp_rank_*_optim_states.pt"))) == 2 * tp
    expected = [torch.load(zero / f"expected_fp32_tp{r}.pt", weights_only=True) for r in range(tp)]
    init = tiny()
    consolidate(open_source(zero), tmp_path / "fp32")
    for r in range(tp):
        got = _module(tmp_path / "fp32", r)
        assert list(got) == list(expected[r])
        for name, value in expected[r].items():  # the fp32 master copy, bit for bit
            assert got[name].dtype == torch.float32 and torch.equal(got[name], value), name
    if precision == "bf16":
        # the saved module holds bf16 copies: rounding the master gives them back, but they are not the master,
        # so a consolidation that read the module instead of the optimizer shards would fail above
        saved = _module(zero, 0)
        got = _module(tmp_path / "fp32", 0)
        assert all(saved[name].dtype == torch.bfloat16 and torch.equal(got[name].bfloat16(), saved[name])
                   for name in got)
        assert sum(not torch.equal(saved[name].float(), got[name]) for name in got) >= len(got) // 2
    assert read_meta(tmp_path / "fp32")[1].tensor_parallel_size == tp
    assert not list(iteration_dir(tmp_path / "fp32", STEPS).glob("*optim_states.pt"))  # optimizer dropped
    # the weights moved away from the init, so this is not comparing two fresh models
    assert not torch.equal(expected[0]["transformer.final_layernorm.weight"], torch.ones(init.hidden_size))
    if tp == 2:  # consolidate and merge to tp=1 in one go
        consolidate(open_source(zero), tmp_path / "tp1", target_tp=1)
        merged = _module(tmp_path / "tp1", 0)
        rules = split_rules(init)
        for name in expected[0]:
            rule = rules[name]
            full = unshard([e[name] for e in expected], rule.dim, rule.stride) if rule.sharded else expected[0][name]
            assert torch.equal(merged[name], full), name
        # ZeRO-2 keeps whole parameters in the model states, so plain resharding works too (fp32 run: same values)
        reshard(open_source(zero), tmp_path / "direct", 1)
        direct = _module(tmp_path / "direct", 0)
        assert all(torch.equal(direct[name], merged[name]) for name in merged)
        consolidate(open_source(zero), tmp_path / "keep", keep_optimizer=True)
        assert len(list(iteration_dir(tmp_path / "keep", STEPS).glob("zero_pp_rank_*_optim_states.pt"))) == 4
        with pytest.raises(CheckpointError, match="needs an unchanged tp size"):
            consolidate(open_source(zero), tmp_path / "bad", target_tp=1, keep_optimizer=True)


def test_consolidate_refuses_a_checkpoint_without_zero_shards(tmp_path: Path) -> None:
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState
    from tests.checkpoint.helpers import save_tp1

    save_tp1(tmp_path / "plain", CogViewModel(tiny(), ParallelState.single()))
    with pytest.raises(CheckpointError, match="no ZeRO optimizer shards"):
        consolidate(open_source(tmp_path / "plain"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
