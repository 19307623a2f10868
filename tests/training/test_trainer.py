"""Trainer internals in spawned gloo processes: non-finite skips, crash during save, schedule, config merge."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from megatron_cogview.checkpoint.layout import CheckpointMeta, read_latest
from megatron_cogview.config import ConfigError, TrainConfig, model_preset
from megatron_cogview.training.engine import build_ds_config, merge_ds_config, param_groups
from megatron_cogview.training.schedule import lr_at
from tests.distributed import run_distributed
from tests.training.data import LAYOUT, make_dataset


def _trainer(data: str, save: str, **train_kw):  # type: ignore[no-untyped-def]
    from data_utils.loader import build_loader
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.engine import create_engine
    from megatron_cogview.training.loop import Trainer
    from megatron_cogview.training.objective import Objective

    state = ParallelState.build(1)
    train = TrainConfig(train_iters=20, micro_batch_size=4, lr=3e-3, warmup=2, save=save, log_interval=1, **train_kw)
    model = CogViewModel(model_preset("tiny", vocab_size=LAYOUT.vocab_size), state)
    engine, schedule = create_engine(model, state, train, build_ds_config(train))
    source = build_loader(data, state.dp_rank, state.dp_size, batch_size=4, seed=0)
    meta = CheckpointMeta(model=model.config.to_dict(), tensor_parallel_size=1)
    objective = Objective.from_layout(LAYOUT, train.txt_loss_scale)
    return Trainer(engine=engine, model=model, state=state, train=train, meta=meta, source=source,
                   objective=objective), schedule


def _nonfinite_skip(rank: int, world: int, data: str, save: str) -> None:
    from megatron_cogview.training.loop import StopSignal, TrainingAborted, Window

    def poison(iteration: int, batch: dict) -> None:
        if iteration in poisoned and rank == 0:  # only rank 0 sees the bad sample
            batch["loss_weights"][0, 0] = float("nan")

    poisoned = {2}
    trainer, schedule = _trainer(data, save, max_consecutive_skips=2)
    trainer.on_step = poison
    window, stop = Window(), StopSignal()
    for _ in range(2):
        trainer.train_step(window, stop)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    lr_before = schedule.applied_steps
    trainer.train_step(window, stop)  # iteration 3: non-finite on rank 0 -> skipped on every rank
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters())), "parameters changed"
    assert schedule.applied_steps == lr_before and trainer.progress.skipped_steps == 1
    assert trainer.progress.iteration == 3
    trainer.train_step(window, stop)  # a good step updates again
    assert not all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert trainer.progress.skips.consecutive == 0
    poisoned.update({4, 5, 6})
    with pytest.raises(TrainingAborted, match="3 consecutive steps were skipped"):
        for _ in range(3):
            trainer.train_step(window, stop)


def test_nonfinite_loss_skips_the_step_on_every_rank(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=128, samples_per_shard=16)
    run_distributed(_nonfinite_skip, 2, data, str(tmp_path / "ckpt"))


def _crash_during_save(rank: int, world: int, data: str, save: str) -> None:
    import megatron_cogview.training.checkpointing as ck
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.loop import StopSignal, Window

    trainer, _ = _trainer(data, save)
    window, stop = Window(), StopSignal()
    for _ in range(4):
        trainer.train_step(window, stop)
    trainer.save()
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(window, stop)
    real = ck.write_trackers
    ck.write_trackers = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("killed while saving"))
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.save()  # iteration 5's files are written, its trackers never are
    finally:
        ck.write_trackers = real
    assert (Path(save) / "5").is_dir() and read_latest(save) == 4
    model, meta = load_model(save, ParallelState.single())
    assert meta.iteration == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_crash_during_save_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=64, samples_per_shard=16)
    run_distributed(_crash_during_save, 1, data, str(tmp_path / "ckpt"))


def test_lr_schedule_warmup_cosine_floor() -> None:
    cfg = TrainConfig(train_iters=100, lr=1.0, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    lin = TrainConfig(train_iters=100, lr=1.0, warmup=10, lr_decay_style="linear", min_lr_ratio=0.0)
    assert lr_at(55, lin) == pytest.approx(0.5)


def test_no_weight_decay_on_layernorms_and_biases() -> None:
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState

    model = CogViewModel(model_preset("tiny"), ParallelState.single())
    decay, no_decay = param_groups(model, 0.04)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("layernorm" in names[id(p)] or names[id(p)].endswith(".bias") for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"word_embeddings.weight", "transformer.position_embeddings.weight"}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.04


def test_deepspeed_json_merge_rule() -> None:
    ds = {"fp16": {"enabled": True, "loss_scale_window": 400}, "optimizer": {"params": {"lr": 1e-4, "betas": [0.9, 0.95]}},
          "gradient_clipping": 0.1, "zero_optimization": {"stage": 1}}
    merged = merge_ds_config(TrainConfig(), ds, explicit=set())
    t = merged.train
    assert (t.precision, t.lr, t.adam_beta2, t.clip_grad, t.zero_stage) == ("fp16", 1e-4, 0.95, 0.1, 1)
    assert any(d.startswith("lr=0.0001 (from the DeepSpeed config") for d in merged.decisions)
    with pytest.raises(ConfigError, match="--lr 0.0003 disagrees with the DeepSpeed config"):
        merge_ds_config(TrainConfig(lr=3e-4), ds, explicit={"lr"})
    out = build_ds_config(t, ds)
    assert "optimizer" not in out and out["fp16"]["hysteresis"] == 2 and out["fp16"]["loss_scale_window"] == 400
    assert math.isclose(out["gradient_clipping"], 0.1)


def test_loss_scale_reads_the_live_fp16_scale() -> None:
    from types import SimpleNamespace

    from megatron_cogview.training.engine import loss_scale

    fp16 = SimpleNamespace(optimizer=SimpleNamespace(loss_scale_config=SimpleNamespace(cur_scale=32768.0)))
    assert loss_scale(fp16) == 32768.0
    assert loss_scale(SimpleNamespace(optimizer=SimpleNamespace(cur_scale=8.0))) == 8.0
    assert loss_scale(SimpleNamespace(optimizer=object())) == 1.0  # fp32/bf16: no scaler
