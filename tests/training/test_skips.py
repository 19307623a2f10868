"""Skipped steps with gradient accumulation, in one 2-rank gloo launch that runs every case in sequence.

Reference: the state before the step. A skipped step leaves parameters, optimizer state and LR schedule
bit-identical on every rank; the next good step is applied; K+1 consecutive skips of any cause abort.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from megatron_cogview.config import TrainConfig, model_preset
from tests.distributed import run_distributed
from tests.training.data import LAYOUT, make_dataset

# (ZeRO stage, precision, gradient accumulation, tensor-parallel size): dp 2 unless tp 2 (then dp 1).
CASES = [(0, "fp32", 2, 1), (0, "bf16", 3, 1), (1, "fp32", 3, 1), (1, "bf16", 2, 1), (2, "fp32", 2, 1),
         (2, "bf16", 3, 1), (1, "fp32", 2, 2)]


def _trainer(data: str, zero: int, precision: str, gas: int, tp: int, **kw: Any):  # type: ignore[no-untyped-def]
    from data_utils.loader import build_loader
    from megatron_cogview.checkpoint.layout import CheckpointMeta
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.engine import build_ds_config, create_engine
    from megatron_cogview.training.loop import Trainer
    from megatron_cogview.training.objective import Objective

    state = ParallelState.build(tp)
    train = TrainConfig(train_iters=50, micro_batch_size=2, gradient_accumulation_steps=gas, lr=3e-3, warmup=2,
                        zero_stage=zero, precision=precision, log_interval=1, **kw)
    model = CogViewModel(model_preset("tiny", vocab_size=LAYOUT.vocab_size), state)
    engine, schedule = create_engine(model, state, train, build_ds_config(train))
    source = build_loader(data, state.dp_rank, state.dp_size, batch_size=2, seed=0) if state.tp_rank == 0 else None
    meta = CheckpointMeta(model=model.config.to_dict(), tensor_parallel_size=tp)
    objective = Objective.from_layout(LAYOUT, train.txt_loss_scale)
    return Trainer(engine=engine, model=model, state=state, train=train, meta=meta, source=source,
                   objective=objective), schedule


class Poison:
    """on_step hook: NaN loss weights in micro-batch `micro` of the next step on rank `rank` (all: -1)."""

    def __init__(self, gas: int, my_rank: int) -> None:
        self.gas, self.my_rank, self.calls, self.plan = gas, my_rank, 0, None  # plan: (micro, rank) or None

    def __call__(self, iteration: int, batch: dict) -> None:
        micro = self.calls % self.gas
        self.calls += 1
        if self.plan is not None and self.plan[0] in (micro, -1) and self.plan[1] in (self.my_rank, -1):
            batch["loss_weights"][0, 0] = float("nan")


def _snapshot(trainer: Any, schedule: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    params = [p.detach().clone() for p in trainer.model.parameters()]
    opt = [t.detach().clone() for s in schedule.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return params, opt, schedule.applied_steps


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _cases(rank: int, world: int, data: str, save: str) -> None:
    from megatron_cogview.training.loop import StopSignal, TrainingAborted, Window

    window, stop = Window(), StopSignal()
    trainers = {}
    for zero, precision, gas, tp in CASES:
        name = f"ZeRO {zero} {precision} gas {gas} tp {tp}"
        trainer, schedule = _trainer(data, zero, precision, gas, tp, max_consecutive_skips=2, save=save)
        trainers[zero, precision, gas, tp] = trainer, schedule
        poison = Poison(gas, rank)
        trainer.on_step = poison
        trainer.train_step(window, stop)  # a good step: optimizer state exists
        positions = [0, gas // 2, gas - 1] if gas == 3 else [0, gas - 1]
        for n, micro in enumerate(positions):
            poison.plan = (micro, n % world)  # the bad micro-batch on one rank only
            before = _snapshot(trainer, schedule)
            trainer.train_step(window, stop)
            after = _snapshot(trainer, schedule)
            assert _same(before[0], after[0]), f"{name}, bad micro-batch {micro}: parameters changed"
            assert _same(before[1], after[1]), f"{name}, bad micro-batch {micro}: optimizer state changed"
            assert before[2] == after[2], f"{name}, bad micro-batch {micro}: LR schedule advanced"
            assert trainer.progress.skips.nonfinite_loss == n + 1 and trainer.progress.skips.overflow == 0, name
            poison.plan = None
            trainer.train_step(window, stop)  # the next good step is applied, on fresh gradients
            good = _snapshot(trainer, schedule)
            assert not _same(after[0], good[0]) and good[2] == after[2] + 1, f"{name}: good step not applied"
            assert all(torch.isfinite(p).all() for p in good[0]), f"{name}: non-finite parameters"
            assert trainer.progress.skips.consecutive == 0, name
        assert trainer.progress.iteration == 1 + 2 * len(positions), name
    # K = 2: a third consecutive skip (every micro-batch, every rank non-finite) aborts on every rank.
    poison.plan = (-1, -1)
    trainer.train_step(window, stop)
    trainer.train_step(window, stop)
    with pytest.raises(TrainingAborted, match=r"3 consecutive steps were skipped .*--max-consecutive-skips 2"):
        trainer.train_step(window, stop)
    _any_cause(trainers[1, "bf16", 2, 1], window, stop)
    _min_loss_scale(trainers[0, "fp32", 2, 1][0], save)


def _any_cause(pair: Any, window: Any, stop: Any) -> None:
    """bf16: infinite gradients with a finite loss are skipped by DeepSpeed (check_grad_overflow), counted as
    overflow skips, and count toward the limit together with non-finite-loss skips."""
    from megatron_cogview.training.loop import TrainingAborted

    trainer, schedule = pair
    trainer.on_step.plan = None
    blow_up = [False]
    trainer.model.word_embeddings.weight.register_hook(lambda g: g * float("inf") if blow_up[0] else g)
    s = trainer.progress.skips
    nonfinite, overflow = s.nonfinite_loss, s.overflow
    before = _snapshot(trainer, schedule)
    blow_up[0] = True
    trainer.train_step(window, stop)
    assert _same(before[0], _snapshot(trainer, schedule)[0]) and before[2] == schedule.applied_steps
    assert (s.nonfinite_loss, s.overflow, s.consecutive) == (nonfinite, overflow + 1, 1)
    blow_up[0] = False
    trainer.on_step.plan = (0, 0)
    trainer.train_step(window, stop)
    assert (s.nonfinite_loss, s.overflow, s.consecutive) == (nonfinite + 1, overflow + 1, 2)
    blow_up[0] = True
    trainer.on_step.plan = None
    with pytest.raises(TrainingAborted, match=r"3 consecutive steps were skipped"):
        trainer.train_step(window, stop)


def _min_loss_scale(trainer: Any, save: str) -> None:
    """DeepSpeed's bare exception at the minimum fp16 loss scale: a checkpoint is saved, then one clear error."""
    from megatron_cogview.checkpoint.layout import read_latest
    from megatron_cogview.training.loop import LossScaleAtMinimum

    def step() -> None:  # what DeepSpeed's DynamicLossScaler raises (fp16 needs a GPU; the text is matched)
        raise Exception("Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.")

    trainer.on_step.plan = None
    trainer.engine.step = step
    it = trainer.progress.iteration
    with pytest.raises(LossScaleAtMinimum, match=rf"minimum loss scale .* at iteration {it + 1}; fixes: .*--lr.*"
                                                 rf"--precision bf16.* \(saved checkpoint {it + 1} to "):
        trainer.run()
    assert read_latest(save) == it + 1


def test_nonfinite_loss_in_any_micro_batch_skips_the_whole_step(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=128, samples_per_shard=16)
    run_distributed(_cases, 2, data, str(tmp_path / "ckpt"), timeout=240)


def test_bf16_configs_check_gradients_for_overflow() -> None:
    import json

    from megatron_cogview.training.engine import build_ds_config
    from tests.training.runner import ROOT

    assert build_ds_config(TrainConfig(precision="bf16"))["bf16"]["check_grad_overflow"] is True
    shipped = json.loads((ROOT / "scripts/ds_configs/bf16_zero1.json").read_text())
    assert shipped["bf16"]["check_grad_overflow"] is True
    off = build_ds_config(TrainConfig(precision="bf16"), {"bf16": {"enabled": True, "check_grad_overflow": False}})
    assert off["bf16"]["check_grad_overflow"] is False  # the user's JSON is respected


def test_training_aborted_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_cogview.errors import exit_on_user_error
    from megatron_cogview.training.loop import LossScaleAtMinimum, TrainingAborted

    for error in (TrainingAborted, LossScaleAtMinimum):
        def body() -> None:
            raise error("3 consecutive steps were skipped")
        assert exit_on_user_error("cogview train", body) == 2
        assert capsys.readouterr().err == "cogview train: error: 3 consecutive steps were skipped\n"
