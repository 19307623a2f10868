"""Training: DeepSpeed engine wiring, the loop, loss, LR schedule, checkpoints and logs."""
