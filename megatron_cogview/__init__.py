"""megatron_cogview: model-parallel CogView training and generation (the core library)."""

__version__ = "0.1.0"
