"""Distributed preprocessing: ranks of a launcher and independent --part jobs equal one process; kill + re-run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from data_utils import preprocess as pp
from data_utils.errors import DataError
from data_utils.loader import build_loader
from data_utils.parts import Part, resolve_part
from data_utils.shards import Manifest
from tests.data_utils.helpers import preprocess_paths

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(seq_len=24, samples_per_shard=3)


def _rows(synth_dir: str) -> list[dict]:
    with open(os.path.join(synth_dir, "captions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _tar_inputs(synth_dir: str, folder: Path, files: int, per_file: int) -> str:
    """A folder of img2dataset-style tars (KEY.png + KEY.txt) holding the first files x per_file synth images."""
    folder.mkdir()
    rows = _rows(synth_dir)
    for t in range(files):
        with tarfile.open(folder / f"in-{t:03d}.tar", "w") as tf:
            for row in rows[t * per_file : (t + 1) * per_file]:
                tf.add(os.path.join(synth_dir, row["image"]), arcname=f"{row['key']}.png")
                caption = folder / "caption.txt"
                caption.write_text(row["caption"], encoding="utf-8")
                tf.add(caption, arcname=f"{row['key']}.txt")
    (folder / "caption.txt").unlink()
    return str(folder)


def _jsonl_inputs(synth_dir: str, folder: Path, files: int, per_file: int) -> list[str]:
    """JSONL files listing the first files x per_file synth images by path."""
    folder.mkdir()
    rows, paths = _rows(synth_dir), []
    for t in range(files):
        path = folder / f"in-{t:03d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows[t * per_file : (t + 1) * per_file]:
                f.write(json.dumps({"image": os.path.join(synth_dir, row["image"]), "caption": row["caption"],
                                    "key": row["key"]}) + "\n")
        paths.append(str(path))
    return paths


def _samples(out: str) -> dict[str, list[int]]:
    """key -> stored tokens of every sample (read through the loader; a repeated key fails)."""
    seen: dict[str, list[int]] = {}
    for batch in build_loader(out, 0, 1, batch_size=8, num_epochs=1, shuffle_buffer=0, shuffle_shards=False):
        for key, tokens, labels in zip(batch["keys"], batch["tokens"], batch["labels"]):
            key = key.split("/")[-1]
            assert key not in seen, f"duplicate sample {key}"
            seen[key] = np.concatenate([tokens.numpy(), labels.numpy()[-1:]]).tolist()
    return seen


def _cli(tokenizers, inputs: list[str], out: Path, *extra: str) -> list[str]:
    return ["preprocess", *inputs, "--text-tokenizer", tokenizers[0], "--image-tokenizer", tokenizers[1],
            "--out", str(out), "--seq-len", "24", "--samples-per-shard", "3", *extra]


def test_resolve_part_from_flags_launchers_and_slurm():
    assert resolve_part(None, None, {}) == Part(0, 1, False, None)
    assert resolve_part(None, None, {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Part(3, 4, True, 1)
    assert resolve_part(None, None, {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == Part(5, 8, True, 1)
    assert resolve_part(4, 2, {"RANK": "1", "WORLD_SIZE": "2"}) == Part(2, 4, False, None)  # flags win
    with pytest.raises(DataError, match="together"):
        resolve_part(4, None, {})
    with pytest.raises(DataError, match="out of range"):
        resolve_part(2, 2, {})


@pytest.mark.slow
def test_two_launcher_ranks_equal_one_process(tokenizers, synth_dir, tmp_path):
    inputs = _tar_inputs(synth_dir, tmp_path / "tars", files=5, per_file=4)
    single = preprocess_paths([inputs], *tokenizers, str(tmp_path / "one"), **SETTINGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "megatron_cogview.cli", *_cli(tokenizers, [inputs], tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    joined = Manifest.load(str(tmp_path / "two"))
    names = [s.name for s in joined.shards]
    # rank 0 read tars 0, 2, 4 and rank 1 tars 1, 3: each wrote its own shards, never the other's
    assert any(n.startswith("data-p00000-") for n in names) and any(n.startswith("data-p00001-") for n in names)
    assert joined.num_samples == single.num_samples == 20
    assert joined.stats["written"] == 20 and joined.settings["num_parts"] == 2
    assert _samples(str(tmp_path / "two")) == _samples(str(tmp_path / "one"))
    assert not os.path.exists(tmp_path / "two" / pp.PROGRESS_DIR)


def test_killed_part_reruns_without_duplicates(tokenizers, synth_dir, tmp_path):
    inputs = _jsonl_inputs(synth_dir, tmp_path / "in", files=4, per_file=6)
    # part 1 owns files 1 and 3; the last image of file 3 is a FIFO, so that part blocks there until killed
    blocked = json.loads(Path(inputs[3]).read_text(encoding="utf-8").splitlines()[-1])["image"]
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    lines = Path(inputs[3]).read_text(encoding="utf-8").replace(blocked, str(fifo))
    Path(inputs[3]).write_text(lines, encoding="utf-8")
    out = tmp_path / "parts"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([sys.executable, "-m", "megatron_cogview.cli", *_cli(tokenizers, inputs, out, "--num-parts",
                                                                                  "2", "--part", "1")],
                           env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / pp.PROGRESS_DIR / "part-00001-of-00002"
    try:
        deadline = time.time() + 120
        while len(list(progress.glob("*.tar.json"))) < 2 and time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert len(list(progress.glob("*.tar.json"))) >= 2  # mid-run: some shards done, the rest not
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    first = preprocess_paths(inputs, *tokenizers, str(out), num_parts=2, part=0, **SETTINGS)
    assert not (out / "dataset.json").exists() and first.num_samples == 12  # part 1 is not finished
    fifo.unlink()
    shutil.copy(blocked, fifo)
    preprocess_paths(inputs, *tokenizers, str(out), num_parts=2, part=1, **SETTINGS)  # the re-run resumes
    reference = preprocess_paths(inputs, *tokenizers, str(tmp_path / "one"), **SETTINGS)
    assert Manifest.load(str(out)).num_samples == reference.num_samples == 24
    assert _samples(str(out)) == _samples(str(tmp_path / "one"))
    # re-running a finished part changes nothing
    again = preprocess_paths(inputs, *tokenizers, str(out), num_parts=2, part=1, **SETTINGS)
    assert again.num_samples == 24


def test_a_different_split_of_the_same_out_is_refused(tokenizers, synth_dir, tmp_path):
    inputs = _jsonl_inputs(synth_dir, tmp_path / "in", files=2, per_file=3)
    preprocess_paths(inputs, *tokenizers, str(tmp_path / "out"), num_parts=2, part=0, **SETTINGS)
    with pytest.raises(DataError, match="another number of parts"):
        preprocess_paths(inputs, *tokenizers, str(tmp_path / "out"), num_parts=3, part=0, **SETTINGS)
    with pytest.raises(DataError, match="another number of parts"):
        preprocess_paths(inputs, *tokenizers, str(tmp_path / "out"), **SETTINGS)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_data_merge_joins_independent_runs_and_names_shards_by_url(tokenizers, synth_dir, tmp_path, capsys):
    from megatron_cogview.cli import main

    inputs = _jsonl_inputs(synth_dir, tmp_path / "in", files=2, per_file=4)
    a = preprocess_paths(inputs[:1], *tokenizers, str(tmp_path / "a"), prefix="a", **SETTINGS)
    b = preprocess_paths(inputs[1:], *tokenizers, str(tmp_path / "b"), prefix="b", **SETTINGS)
    assert main(["data-merge", str(tmp_path / "all"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    joined = Manifest.load(str(tmp_path / "all"))
    assert joined.num_samples == a.num_samples + b.num_samples == 8
    assert _samples(str(tmp_path / "all")) == {**_samples(str(tmp_path / "a")), **_samples(str(tmp_path / "b"))}
    # after an upload: the same data listed by URL (here pipe:cat of the local copies), from a brace pattern
    pattern = f"pipe:cat {tmp_path}/all/../{{a/a,b/b}}-{{000000..000001}}.tar"
    assert main(["data-merge", str(tmp_path / "remote"), str(tmp_path / "all"), "--shard-urls", pattern]) == 0
    assert Manifest.load(str(tmp_path / "remote")).shards[0].name.startswith("pipe:cat ")
    assert _samples(str(tmp_path / "remote")) == _samples(str(tmp_path / "all"))
    assert main(["data-merge", str(tmp_path / "bad"), str(tmp_path / "all"), "--shard-urls", "pipe:cat x{1..3}"]) == 2
    assert "expands to 3" in capsys.readouterr().err
    assert main(["data-merge", str(tmp_path / "twice"), str(tmp_path / "a"), str(tmp_path / "a")]) == 2
    assert "listed twice" in capsys.readouterr().err
