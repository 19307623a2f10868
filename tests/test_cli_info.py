"""`cogview info` (counts checked against a hand count and a real model) and CLI error handling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_cogview.cli import main
from megatron_cogview.config import ModelConfig, model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState


def test_info_prints_exact_4b_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "cogview-4b", "--json", "--tp", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == 3_928_849_920
    assert out["config"]["num_layers"] == 48 and out["config"]["vocab_size"] == 58240
    # at tp=8 a rank holds 1/8 of every sharded matrix plus all replicated tensors
    h, L, pos = 2560, 48, 1089 * 2560
    replicated = pos + L * (4 * 2 * h + 2 * h) + 2 * h  # LNs, row-parallel biases, final LN, positions
    assert out["per_tp_rank"] == (3_928_849_920 - replicated) // 8 + replicated


def test_info_from_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                         "vocab_size": 256, "max_position_embeddings": 32}}))
    assert main(["info", "--config", str(cfg)]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "--config", "/nonexistent/model.json"], "config file '/nonexistent/model.json' does not exist"),
        (["info", "--preset", "tiny", "--tp", "3"], "num_attention_heads=4 is not divisible by tensor-parallel size 3"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_json_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"num_layers": 2, "hiden_size": 64}))
    assert main(["info", "--config", str(cfg)]) == 2
    assert "unknown ModelConfig field(s) ['hiden_size']" in capsys.readouterr().err


def _hand_breakdown(config: ModelConfig) -> dict[str, int]:
    """The parameter count written out by hand from the architecture (the independent reference)."""
    h, v, f, L = config.hidden_size, config.vocab_size, config.ffn_size, config.num_layers
    n_ln = {"sandwich": 4, "pre": 2, "post": 2}[config.layernorm_order]
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + n_ln * 2 * h
    return {"word_embeddings": v * h, "position_embeddings": config.max_position_embeddings * h,
            "per_layer": per_layer, "layers": L * per_layer,
            "final_layernorm": 0 if config.layernorm_order == "post" else 2 * h}


@pytest.mark.parametrize("order", ["sandwich", "pre", "post"])
def test_breakdown_adds_up_to_a_real_model(order: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = model_preset("tiny", layernorm_order=order)
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps({"model": config.to_dict()}))
    assert main(["info", "--config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    real = CogViewModel(config, ParallelState.single())  # real weights, not the meta model info builds
    total = sum(p.numel() for p in real.parameters())
    parts, layer = out["breakdown"], out["per_layer_breakdown"]
    assert out["parameters"] == total == sum(v for k, v in parts.items() if k != "per_layer")
    assert parts == _hand_breakdown(config)
    assert sum(layer.values()) == parts["per_layer"]
    h = config.hidden_size
    assert layer["layernorms"] == {"sandwich": 4, "pre": 2, "post": 2}[order] * 2 * h


def test_text_output_lists_the_per_layer_parts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--preset", "cogview-4b"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    numbers = {words[0]: int(words[1].replace(",", "")) for words in lines if len(words) == 2 and words[1].replace(",", "").isdigit()}
    assert numbers["total"] == 3_928_849_920
    h, f = 2560, 10240
    assert numbers["attention"] == 4 * h * h + 4 * h and numbers["mlp"] == 2 * h * f + f + h
    assert numbers["attention"] + numbers["mlp"] + numbers["layernorms"] == numbers["per_layer"]
