# Sourced by the launch scripts: `launcher` sets NPROC, DS_CONFIG and LAUNCH for this machine.
#   GPUs: deepspeed --num_gpus NPROC (all GPUs by default), the paper's fp16 ZeRO-1 JSON
#   CPU:  torchrun --standalone over gloo (1 process by default, OMP_NUM_THREADS=1), the CPU fp32 JSON
# `launcher module` makes LAUNCH end with the flag that runs a Python module (finetune.*) instead of a file.
launcher() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    NPROC="${NPROC:-$(nvidia-smi -L | wc -l)}"
    DS_CONFIG="${DS_CONFIG:-scripts/ds_configs/cogview_fp16_zero1.json}"
    LAUNCH=(deepspeed --num_gpus "$NPROC")
    if [ "${1:-}" = module ]; then LAUNCH+=(--module); fi
  else
    NPROC="${NPROC:-1}"
    DS_CONFIG="${DS_CONFIG:-scripts/ds_configs/cpu_fp32.json}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    LAUNCH=("${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
    if [ "${1:-}" = module ]; then LAUNCH+=(-m); fi
  fi
}
