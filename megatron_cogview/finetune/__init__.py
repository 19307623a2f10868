"""Fine-tuning tasks: one module per downstream task (preset flags + data transform + loss weights) over the
pre-training entry (megatron_cogview.commands.pretrain). Run one with `python -m megatron_cogview.finetune.NAME`
(or, from the repository root, `python -m finetune.NAME`: the root finetune/ modules are shims over these)."""
