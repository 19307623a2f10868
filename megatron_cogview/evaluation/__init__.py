"""Evaluation of text-to-image checkpoints: FID-k, Inception Score, Caption Loss, self-reranking, checker accuracy."""
