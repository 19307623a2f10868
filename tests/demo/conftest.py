"""One `cogview demo --fast` run per test session, shared by the demo, generate and evaluate tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron_cogview.cli import main


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    return out
