"""The end-to-end laptop demo (`cogview demo`): entry layer, may use every package."""
