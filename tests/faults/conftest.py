"""One tiny dataset and one uninterrupted reference run, shared by every fault test of the session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import DP2, launch
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


@pytest.fixture(scope="session")
def reference2(data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same without a fault on 2 data-parallel ranks (micro-batch 4 each)."""
    save = tmp_path_factory.mktemp("faults_ref2") / "ref"
    proc = launch(data, save, *DP2, nproc=2, load=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return save
