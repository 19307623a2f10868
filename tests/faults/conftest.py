"""One tiny dataset and one uninterrupted reference run, shared by every fault test of the session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import launch
from tests.training.data import make_dataset


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("faults_data") / "shards"))


@pytest.fixture(scope="session")
def reference(data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps without a fault; checkpoints 3, 6 and 8 kept; losses in metrics.jsonl."""
    save = tmp_path_factory.mktemp("faults_ref") / "ref"
    proc = launch(data, save, load=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return save
