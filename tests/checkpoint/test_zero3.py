"""ZeRO-3 checkpoints (parameters partitioned over dp ranks) used by conversion, export, generation, fine-tuning.

One real bf16 ZeRO-3 run (2 gloo ranks, DeepSpeed's CPU accelerator, the project's engine and checkpoint
code) is shared by the module; the reference is what the live engine held: DeepSpeed's gathered fp32
master weights, its gathered bf16 parameters and its logits.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from megatron_cogview import cli
from megatron_cogview.checkpoint.convert import consolidate
from megatron_cogview.checkpoint.export import export_safetensors, load_exported
from megatron_cogview.checkpoint.layout import CheckpointError, iteration_dir, model_states_file, read_meta
from megatron_cogview.checkpoint.load import load_model
from megatron_cogview.checkpoint.reshard import split_rules
from megatron_cogview.checkpoint.source import open_source
from megatron_cogview.config import TrainConfig
from megatron_cogview.generation import GenerationConfig
from megatron_cogview.generation.decoding import decode
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState, unshard
from tests.checkpoint.ds_zero import train_zero3
from tests.checkpoint.helpers import tiny
from tests.distributed import run_distributed

torch.set_num_threads(1)
STEPS = 2
SINGLE = ParallelState.single()


@pytest.fixture(scope="module")
def zero3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    save = tmp_path_factory.mktemp("zero3") / "ckpt"
    run_distributed(train_zero3, 2, tiny().to_dict(), "bf16", str(save), STEPS, timeout=400)
    return save


@pytest.fixture(scope="module")
def engine(zero3: Path) -> dict:
    return torch.load(zero3 / "engine.pt", weights_only=True)


@pytest.fixture(scope="module")
def consolidated(zero3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("consolidated") / "fp32"
    assert cli.main(["convert", "--load", str(zero3), "--save", str(out), "--consolidate"]) == 0
    return out


def _module(save: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(model_states_file(save, STEPS, rank), weights_only=True)["module"]


def test_the_run_wrote_a_partitioned_checkpoint(zero3: Path) -> None:
    names = {p.name for p in iteration_dir(zero3, STEPS).iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    assert "mp_rank_00_model_states.pt" not in names
    placeholders = torch.load(iteration_dir(zero3, STEPS) / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                              weights_only=True)["module"]
    assert all(t.numel() == 0 for t in placeholders.values())  # the weights are only in the optimizer shards


def test_consolidated_weights_are_the_engine_parameters(consolidated: Path, engine: dict) -> None:
    assert sorted(p.name for p in iteration_dir(consolidated, STEPS).iterdir()) == [
        "cogview_meta.json", "mp_rank_00_model_states.pt"]  # the layout of a ZeRO-0..2 checkpoint
    assert read_meta(consolidated)[1].tensor_parallel_size == 1
    got = _module(consolidated)
    assert list(got) == list(engine["fp32"])  # every parameter, in the model's order
    for name, master in engine["fp32"].items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], master), name
        assert torch.equal(got[name].bfloat16(), engine["module"][name]), name  # the bf16 working copy
    fresh = CogViewModel(tiny(), SINGLE).state_dict()
    assert sum(not torch.equal(got[n], fresh[n]) for n in got) == len(got)  # trained away from the init
    assert list(open_source(consolidated).open(0)) == list(got)  # readable as a plain checkpoint


def test_logits_equal_the_live_engine(zero3: Path, consolidated: Path, engine: dict) -> None:
    def logits(model: CogViewModel) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(engine["tokens"], gather=True)

    lines: list[str] = []
    models = [load_model(load, SINGLE, dtype=torch.bfloat16, log=lines.append)[0] for load in (consolidated, zero3)]
    assert len(lines) == 1 and "ZeRO-3" in lines[0] and f"cogview convert --load {zero3}" in lines[0]
    live = CogViewModel(tiny(), SINGLE, dtype=torch.bfloat16)
    live.load_state_dict(engine["module"])  # the engine's gathered bf16 parameters, outside DeepSpeed
    got = [logits(m) for m in models]
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], logits(live))
    # Inside the engine the same bf16 weights give logits a bf16 rounding step or two apart (1 ulp at
    # |logit| ~ 0.3 is 2**-9); the untrained model is much further, so this tolerance still tells them apart.
    tol = dict(rtol=0.0, atol=2.0**-7)
    torch.testing.assert_close(got[0], engine["logits"], **tol)
    init = logits(CogViewModel(tiny(), SINGLE, dtype=torch.bfloat16))
    assert (init.float() - engine["logits"].float()).abs().max() > 10 * tol["atol"]


def test_generation_from_zero3_equals_generation_from_its_consolidation(zero3: Path, consolidated: Path) -> None:
    config = GenerationConfig(top_k=20, seed=3)
    prompts = [[5, 17, 300], [9, 2]]
    tokens = []
    for load in (zero3, consolidated):
        model, _ = load_model(load, SINGLE, log=lambda _: None)
        tokens.append(decode(model, prompts, 12, config, allowed=[(100, 900)]).tokens)
    assert torch.equal(tokens[0], tokens[1])
    assert ((tokens[0] >= 100) & (tokens[0] < 900)).all()


def test_zero3_to_tp2_and_export(zero3: Path, consolidated: Path, tmp_path: Path) -> None:
    full = _module(consolidated)
    # --target-tp alone: a ZeRO-3 checkpoint can only be read by consolidating, so that is implied
    assert cli.main(["convert", "--load", str(zero3), "--save", str(tmp_path / "tp2"), "--target-tp", "2"]) == 0
    assert read_meta(tmp_path / "tp2")[1].tensor_parallel_size == 2
    shards = [_module(tmp_path / "tp2", r) for r in range(2)]
    rules = split_rules(tiny())
    for name, value in full.items():
        rule = rules[name]
        merged = unshard([s[name] for s in shards], rule.dim, rule.stride) if rule.sharded else shards[1][name]
        assert torch.equal(merged, value), name
    assert any(shards[0][n].shape != full[n].shape for n in full)  # really split
    assert cli.main(["convert", "--load", str(zero3), "--save", str(tmp_path / "st"), "--export", "safetensors"]) == 0
    exported = load_exported(tmp_path / "st").state_dict()
    assert all(torch.equal(exported[n], full[n]) for n in full)
    with pytest.raises(CheckpointError, match="ZeRO-3"):
        export_safetensors(open_source(zero3), tmp_path / "lib-export")
    with pytest.raises(CheckpointError, match="--keep-optimizer does not apply to a ZeRO-3"):
        consolidate(open_source(zero3), tmp_path / "keep", keep_optimizer=True)


def test_finetune_from_a_zero3_checkpoint(zero3: Path, consolidated: Path) -> None:
    from megatron_cogview.commands.pretrain import _finetune_weights

    class Logger:
        lines: list[str] = []

        def info(self, message: str) -> None:
            self.lines.append(message)

    model = CogViewModel(tiny(), SINGLE)
    _finetune_weights(model, TrainConfig(finetune_from=str(zero3)), SINGLE, Logger())  # type: ignore[arg-type]
    expected = _module(consolidated)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert any("cogview convert" in line for line in Logger.lines)
    assert any("fine-tuning from the weights of" in line for line in Logger.lines)


def _copy(zero3: Path, dest: Path, drop: str = "") -> Path:
    shutil.copytree(zero3, dest, ignore=shutil.ignore_patterns(drop) if drop else None)
    return dest


@pytest.mark.parametrize("drop,message", [
    ("zero_pp_rank_1_mp_rank_00_model_states.pt", r"lacks the ZeRO-3 model states of data-parallel rank\(s\) \[1\]"),
    ("bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", r"lacks the ZeRO optimizer shards of data-parallel rank\(s\) \[1\]"),
    ("*_model_states.pt", r"mp_rank_00_model_states.pt is missing: the checkpoint is incomplete"),
])
def test_an_incomplete_checkpoint_names_what_is_missing_and_what_was_found(
    zero3: Path, tmp_path: Path, drop: str, message: str
) -> None:
    bad = _copy(zero3, tmp_path / "bad", drop)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(bad, SINGLE, log=lambda _: None)
    assert "found: " in str(info.value) and "cogview_meta.json" in str(info.value)
    code = cli.main(["convert", "--load", str(bad), "--save", str(tmp_path / "out"), "--consolidate"])
    assert code == 2 and not (tmp_path / "out").exists()


class Foreign:
    """A class no allowlist knows: unpickling it could run code."""


def test_a_zero_file_with_foreign_pickles_needs_trust_pickle(zero3: Path, tmp_path: Path) -> None:
    bad = _copy(zero3, tmp_path / "bad")
    torch.save({"optimizer_state_dict": Foreign()},
               iteration_dir(bad, STEPS) / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match="test_zero3.Foreign.*--trust-pickle"):
        consolidate(open_source(bad), tmp_path / "out")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_model(bad, SINGLE, log=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fp32_zero3_consolidates_exactly_and_gives_the_engine_logits_bit_for_bit(tmp_path: Path) -> None:
    zero3 = tmp_path / "fp32-zero3"
    run_distributed(train_zero3, 2, tiny().to_dict(), "fp32", str(zero3), STEPS, timeout=400)
    assert (iteration_dir(zero3, STEPS) / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    engine = torch.load(zero3 / "engine.pt", weights_only=True)
    consolidate(open_source(zero3), tmp_path / "out", log=lambda _: None)
    got = _module(tmp_path / "out")
    assert list(got) == list(engine["fp32"])
    assert all(torch.equal(got[n], engine["fp32"][n]) and torch.equal(got[n], engine["module"][n]) for n in got)
    model, _ = load_model(tmp_path / "out", SINGLE)
    with torch.no_grad():
        assert torch.equal(model.eval()(engine["tokens"], gather=True), engine["logits"])
