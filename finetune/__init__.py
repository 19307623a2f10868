"""finetune: one module per downstream task (preset config + data + the training loop)."""
