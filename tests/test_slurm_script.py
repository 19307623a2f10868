"""scripts/pretrain_slurm.sh rendered in a fake SLURM allocation: the launch command it would run, and its flags
accepted by the real argument parser."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain_slurm.sh"


def _render(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "scontrol"  # `scontrol show hostnames node[001-002]` -> one host per line
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'node001\\nnode002\\n'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[001-002]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "cv", "SLURM_GPUS_ON_NODE": "4", "SLURM_SUBMIT_DIR": str(ROOT),
           "DATA": "/shared/data", "DRY_RUN": "1", "PYTHON": "python3", **extra}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_renders_one_torchrun_per_node_meeting_at_the_first_host(tmp_path: Path) -> None:
    proc = _render(tmp_path, TP="2", EXTRA="--checkpoint-activations --wandb-project cv")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "python3"]
    launcher = argv[4: argv.index("pretrain_gpt2.py")]
    assert launcher == ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_backend",
                        "c10d", "--rdzv_endpoint", "node001:29500", "--rdzv_id", "4242"]
    flags = argv[argv.index("pretrain_gpt2.py") + 1:]
    from arguments import parse_args  # the flags it passes are ones pretrain_gpt2.py accepts

    args = parse_args(flags)
    assert args.parallel.tensor_parallel_size == 2
    assert args.train.save == args.train.load == "checkpoints/cv"
    assert args.train.wandb_project == "cv" and args.model_config().checkpoint_activations
    assert args.preset == "cogview-4b" and args.data.paths("train") == ["/shared/data"]


def test_outside_an_allocation_is_one_clear_line(tmp_path: Path) -> None:
    proc = _render(tmp_path, SLURM_JOB_NODELIST="")
    assert proc.returncode != 0
    assert "submit with sbatch" in proc.stderr and proc.stderr.count("\n") == 1
