"""`cogview info` and CLI error handling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_cogview.cli import main


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
