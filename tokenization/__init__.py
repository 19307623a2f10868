"""tokenization: SentencePiece text tokenizer, VQ-VAE image tokenizer and CogView's unified token layout."""
