"""Lint: ruff, with the settings in pyproject.toml, passes on the packages, the root modules and the tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ is not enforced yet (its scripts are being reworked); add it here once it passes
PATHS = ("megatron_cogview", "tokenization", "data_utils", "finetune", "tests", "arguments.py", "pretrain_gpt2.py",
         "setup.py")


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`ruff check` with the project's settings and no cache folder."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                           *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_project_passes_ruff() -> None:
    result = ruff(*PATHS)
    assert result.returncode == 0, f"ruff found problems (fix them, or `ruff check --fix`):\n{result.stdout}{result.stderr}"


def test_ruff_reports_a_violation(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text("import os\nimport sys\n\nprint(sys.argv)\n")
    result = ruff("probe.py", cwd=tmp_path)
    assert result.returncode == 1 and "F401" in result.stdout and "`os` imported but unused" in result.stdout
