"""finetune: repo-root shims (`python -m finetune.NAME`) over megatron_cogview.finetune, one per downstream task."""
