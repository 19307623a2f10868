#!/usr/bin/env bash
# Pre-train CogView on a SLURM cluster: `sbatch scripts/pretrain_slurm.sh` (edit the #SBATCH lines or override
# them on the sbatch command line, e.g. `sbatch --nodes 16 --time 72:00:00 scripts/pretrain_slurm.sh`).
#SBATCH --job-name=cogview
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=logs/%x-%j.out
#
# One srun task per node starts torchrun, which starts one process per GPU; the nodes meet at the first host of
# the allocation (c10d rendezvous). SLURM sends SIGTERM 5 minutes before the time limit (--signal above):
# training saves a checkpoint and exits 0, and resubmitting the same script resumes from $SAVE.
#
# Knobs (environment variables, exported to sbatch):
#   DATA           dataset folder(s) or dataset.json URL(s) every node can read            [required]
#   SAVE           shared checkpoint directory                                            [checkpoints/$SLURM_JOB_NAME]
#   PRESET         model preset                                                           [cogview-4b]
#   TP             tensor-parallel size (within a node is fastest)                        [1]
#   GPUS_PER_NODE  processes per node                                      [$SLURM_GPUS_ON_NODE, else 8]
#   DS_CONFIG      DeepSpeed JSON                          [scripts/ds_configs/cogview_fp16_zero1.json]
#   ITERS          optimizer steps                                                        [144000]
#   MASTER_PORT    rendezvous port                                                        [29500]
#   PYTHON         interpreter with megatron-cogview installed                  [.venv/bin/python or python3]
#   EXTRA          more pretrain_gpt2.py flags (e.g. "--checkpoint-activations --wandb-project cogview")
#   DRY_RUN=1      print the launch command instead of running it
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
: "${DATA:?set DATA to a folder made by cogview preprocess}"
: "${SLURM_JOB_NODELIST:?not inside a SLURM allocation: submit with sbatch scripts/pretrain_slurm.sh}"
NODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
GPUS="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
SAVE="${SAVE:-checkpoints/${SLURM_JOB_NAME:-cogview}}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p logs
LAUNCH=(srun --kill-on-bad-exit=1 --ntasks-per-node=1 "$PYTHON" -m torch.distributed.run
  --nnodes "$NODES" --nproc_per_node "$GPUS" --rdzv_backend c10d
  --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id "${SLURM_JOB_ID:-cogview}"
  pretrain_gpt2.py --preset "${PRESET:-cogview-4b}" --tensor-parallel-size "${TP:-1}"
  --train-data "$DATA" --train-iters "${ITERS:-144000}"
  --deepspeed --deepspeed_config "${DS_CONFIG:-scripts/ds_configs/cogview_fp16_zero1.json}"
  --save "$SAVE" --load "$SAVE" --save-interval 1000 --log-interval 10)
# shellcheck disable=SC2206  # EXTRA is a list of flags on purpose
LAUNCH+=(${EXTRA:-})
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${LAUNCH[@]}"
  echo
  exit 0
fi
exec "${LAUNCH[@]}"
