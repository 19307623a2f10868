"""A corrupted or dangling tracker never leads to training from scratch over existing checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron_cogview.checkpoint.layout import TRACKER, CheckpointError
from megatron_cogview.training.checkpointing import prune, resume_iteration
from tests.faults.helpers import assert_intact, assert_one_line, assert_resumes_exactly, clone, launch


def test_garbage_tracker_refuses_then_the_named_fix_resumes_exactly(data: str, reference: Path,
                                                                   tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=6)
    for name in (TRACKER, "latest"):
        (save / name).write_text("abc")
    proc = launch(data, save)
    line = assert_one_line(proc, str(save / TRACKER), "'abc'", "complete: 3, 6")
    assert "starting from scratch" not in proc.stdout
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["3", "6"]  # nothing trained, nothing pruned
    fix = line.split("; to resume from the newest complete one: ")[1]
    assert fix == f"echo 6 | tee {save / TRACKER} {save / 'latest'}"
    for name in (TRACKER, "latest"):
        (save / name).write_text("6\n")
    assert_resumes_exactly(data, save, reference, 6)
    assert_intact(save, 8, [3, 6, 8])


def test_tracker_naming_a_missing_folder_refuses(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=6)
    for name in (TRACKER, "latest"):
        (save / name).write_text("9")
    proc = launch(data, save)
    assert_one_line(proc, "names iteration 9", "is missing", "complete iterations found: 3, 6", "echo 6 | tee")
    assert sorted(p.name for p in save.iterdir() if p.is_dir()) == ["3", "6"]


def test_resume_iteration_and_prune_rules(tmp_path: Path) -> None:
    assert resume_iteration(str(tmp_path / "none")) is None
    assert resume_iteration(str(tmp_path)) is None  # empty: a fresh start
    for it in (2, 4, 6):
        (tmp_path / str(it)).mkdir()
        (tmp_path / str(it) / "cogview_meta.json").write_text("{}")
    (tmp_path / "8").mkdir()  # incomplete: no meta file
    with pytest.raises(CheckpointError, match="no latest_checkpointed_iteration.txt or latest .*complete: 2, 4, 6"):
        resume_iteration(str(tmp_path))  # folders but no tracker: never a fresh start
    (tmp_path / TRACKER).write_text("8")
    with pytest.raises(CheckpointError, match="names iteration 8 but folder .* is incomplete"):
        resume_iteration(str(tmp_path))
    (tmp_path / TRACKER).write_text("4")
    assert resume_iteration(str(tmp_path)) == 4
    # resumed from 4 and then wrote 10 with keep-last 1: only what is older than 4 or our own may go
    (tmp_path / "10").mkdir()
    prune(str(tmp_path), 1, keep=10, deletable=lambda it: it in {10} or it < 4)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.is_dir()) == [4, 6, 8, 10]


def test_save_folder_with_checkpoints_needs_load_and_partials_are_cleaned(tmp_path: Path) -> None:
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.save_lock import LOCK_FILE, prepare_save_folder

    save = tmp_path / "run"
    (save / "4").mkdir(parents=True)
    (save / ".partial-6").mkdir()
    with pytest.raises(CheckpointError, match="already holds checkpoints \\(iterations 4\\).*pass --load"):
        prepare_save_folder(str(save), "", ParallelState.single(), print)
    assert not (save / LOCK_FILE).exists() and (save / ".partial-6").is_dir()  # refused: nothing touched
    warnings: list[str] = []
    lock = prepare_save_folder(str(save), str(save), ParallelState.single(), warnings.append)
    assert warnings == [f"deleted the half-written checkpoint folder {save / '.partial-6'} of an interrupted save"]
    assert sorted(p.name for p in save.iterdir()) == [LOCK_FILE, "4"]
    lock.release()
