"""End-to-end conversion: tp round trips (bit for bit, same logits), re-padding, export, original import, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from megatron_cogview import cli
from megatron_cogview.checkpoint.convert import reshard
from megatron_cogview.checkpoint.export import load_exported
from megatron_cogview.checkpoint.layout import CheckpointError, model_states_file, read_meta
from megatron_cogview.checkpoint.source import open_source
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.checkpoint.helpers import ITERATION, TOL, logits_match, save_tp1, save_tp_model, tiny, tokens
from tests.distributed import run_distributed

torch.set_num_threads(1)


def _module(save: Path, rank: int = 0, iteration: int = ITERATION) -> dict[str, torch.Tensor]:
    return torch.load(model_states_file(save, iteration, rank), weights_only=True)["module"]


def _reference(path: Path, model: CogViewModel) -> None:
    x = tokens(model.config.vocab_size)
    with torch.no_grad():
        torch.save({"tokens": x, "logits": model.eval()(x)}, path)


def _cli(*args: str) -> int:
    """Run `cogview convert` through the real entry point."""
    return cli.main(["convert", *args])


def test_round_trip_1_2_4_1_bit_for_bit_and_same_logits(tmp_path: Path) -> None:
    model = CogViewModel(tiny(), ParallelState.single())
    save_tp1(tmp_path / "tp1", model)
    _reference(tmp_path / "ref.pt", model)
    assert _cli("--load", str(tmp_path / "tp1"), "--save", str(tmp_path / "tp2"), "--target-tp", "2") == 0
    assert _cli("--load", str(tmp_path / "tp2"), "--save", str(tmp_path / "tp4"), "--target-tp", "4") == 0
    assert _cli("--load", str(tmp_path / "tp4"), "--save", str(tmp_path / "back"), "--target-tp", "1") == 0
    back = _module(tmp_path / "back")
    original = model.state_dict()
    assert list(back) == list(original)
    for name, value in original.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name
    it, meta = read_meta(tmp_path / "tp4")
    assert (it, meta.tensor_parallel_size, meta.model["vocab_size"]) == (ITERATION, 4, 1024)
    assert meta.extra["converted_from"]["tensor_parallel_size"] == 2
    states = torch.load(model_states_file(tmp_path / "tp4", ITERATION, 3), weights_only=True)
    assert states["iteration"] == ITERATION and states["cogview"]["tensor_parallel_size"] == 4
    assert states["optimizer"] is None  # optimizer state is dropped
    assert not list(tmp_path.glob(".*converting*"))  # staging directories are gone
    n = tiny().vocab_size
    run_distributed(logits_match, 2, str(tmp_path / "tp2"), str(tmp_path / "ref.pt"), n)
    run_distributed(logits_match, 4, str(tmp_path / "tp4"), str(tmp_path / "ref.pt"), n)


def test_tp2_checkpoint_to_tp1_gives_the_same_logits(tmp_path: Path) -> None:
    cfg = tiny(seed=99)
    run_distributed(save_tp_model, 2, cfg.to_dict(), str(tmp_path / "tp2"), str(tmp_path / "ref.pt"))
    reshard(open_source(tmp_path / "tp2"), tmp_path / "tp1", 1)
    model = CogViewModel(cfg, ParallelState.single())
    model.load_state_dict(_module(tmp_path / "tp1"))
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ref["tokens"]), ref["logits"], **TOL)
    # and the weights are exactly the tp=1 model's (same master weights at any tp)
    for name, value in CogViewModel(cfg, ParallelState.single()).state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_vocab_is_repadded_for_the_new_tp(tmp_path: Path) -> None:
    cfg = tiny(vocab_size=384)  # 300 real tokens padded to a multiple of 128
    model = CogViewModel(cfg, ParallelState.single())
    save_tp1(tmp_path / "tp1", model, tokenizers={"num_tokens": 300})
    _reference(tmp_path / "ref.pt", model)
    reshard(open_source(tmp_path / "tp1"), tmp_path / "tp2", 2)
    assert read_meta(tmp_path / "tp2")[1].model["vocab_size"] == 512  # pad_vocab_size(300, 2)
    rows = torch.cat([_module(tmp_path / "tp2", r)["word_embeddings.weight"] for r in range(2)])
    assert torch.equal(rows[:384], model.word_embeddings.weight.detach()) and not rows[384:].any()
    run_distributed(logits_match, 2, str(tmp_path / "tp2"), str(tmp_path / "ref.pt"), 300)
    reshard(open_source(tmp_path / "tp2"), tmp_path / "tp1b", 1)
    for name, value in model.state_dict().items():
        assert torch.equal(_module(tmp_path / "tp1b")[name], value), name


def test_safetensors_export_reloads_with_identical_logits(tmp_path: Path) -> None:
    cfg = tiny(seed=3)
    model = CogViewModel(cfg, ParallelState.single()).eval()
    vocab_file = tmp_path / "text.model"
    vocab_file.write_bytes(b"sentencepiece stand-in")
    save_tp1(tmp_path / "tp1", model, tokenizers={"text": {"model_path": str(vocab_file)}, "num_tokens": 1000})
    reshard(open_source(tmp_path / "tp1"), tmp_path / "tp4", 4)
    assert _cli("--load", str(tmp_path / "tp4"), "--save", str(tmp_path / "export"), "--export", "safetensors") == 0
    files = sorted(p.relative_to(tmp_path / "export").as_posix() for p in (tmp_path / "export").rglob("*") if p.is_file())
    assert files == ["config.json", "model.safetensors", "tokenizer/text.model"]
    doc = json.loads((tmp_path / "export" / "config.json").read_text())
    assert doc["meta"]["tokenizers"]["text"]["model_path"] == "tokenizer/text.model"
    assert doc["model"]["vocab_size"] == 1024 and doc["meta"]["tensor_parallel_size"] == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "export" / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(model.state_dict())  # tied output embedding stored once
    loaded = load_exported(tmp_path / "export").eval()
    x = tokens(cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _Marker:
    """Unpickling this writes a marker file (stands in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.path), "pwned"))


def _original_checkpoint(root: Path, model: CogViewModel, extra: dict) -> None:
    """The original CogView layout: <iter>/mp_rank_00_model_states.pt + latest_checkpointed_iteration.txt only."""
    d = root / "1000"
    d.mkdir(parents=True)
    module = {f"module.{k}": v for k, v in model.state_dict().items()}  # FP16_Module-style prefix
    torch.save({"module": module, "iteration": 1000, **extra}, d / "mp_rank_00_model_states.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("1000")


def test_original_cogview_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = CogViewModel(tiny(), ParallelState.single())
    _original_checkpoint(tmp_path / "orig", model, {"args": None})
    assert _cli("--from", "cogview-original", "--load", str(tmp_path / "orig"), "--save", str(tmp_path / "a")) == 2
    assert "pass --preset NAME or --config FILE" in capsys.readouterr().err
    assert _cli("--from", "cogview-original", "--load", str(tmp_path / "orig"), "--preset", "tiny",
                "--save", str(tmp_path / "tp2"), "--target-tp", "2") == 0
    reshard(open_source(tmp_path / "tp2"), tmp_path / "tp1", 1)
    back = _module(tmp_path / "tp1", iteration=1000)
    for name, value in model.state_dict().items():
        assert torch.equal(back[name], value), name
    assert read_meta(tmp_path / "tp1", 1000)[1].extra["source_format"] == "cogview-original"


def test_crafted_pickle_is_refused_without_trust_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    model = CogViewModel(tiny(), ParallelState.single())
    _original_checkpoint(tmp_path / "orig", model, {"payload": _Marker(str(marker))})
    args = ["--from", "cogview-original", "--load", str(tmp_path / "orig"), "--preset", "tiny"]
    assert _cli(*args, "--save", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "weights_only=True" in err and "--trust-pickle" in err
    assert not marker.exists() and not (tmp_path / "a").exists()
    assert _cli(*args, "--save", str(tmp_path / "b"), "--trust-pickle") == 0
    assert marker.read_text() == "pwned"  # the full unpickler ran, as the user allowed
    assert "full unpickler" in capsys.readouterr().err


def test_user_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tp1(tmp_path / "tp1", CogViewModel(tiny(), ParallelState.single()))
    assert _cli("--load", str(tmp_path / "tp1"), "--save", str(tmp_path / "x"), "--target-tp", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cogview convert: error: --target-tp 3 does not divide num_attention_heads=4 (and ffn_size=256); "
                   "choose one of 1, 2, 4")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))
    assert _cli("--load", str(tmp_path / "nope"), "--save", str(tmp_path / "x")) == 2
    assert "does not exist" in capsys.readouterr().err
    os.remove(model_states_file(tmp_path / "tp1", ITERATION, 0))
    assert _cli("--load", str(tmp_path / "tp1"), "--save", str(tmp_path / "x")) == 2
    assert "no mp_rank_XX_model_states.pt" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert _cli("--load", str(tmp_path / "tp1"), "--save", str(tmp_path / "full")) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="does not exist"):
        open_source(tmp_path / "missing")
