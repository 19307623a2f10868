"""The CogView transformer on the tensor-parallel core."""
from megatron_cogview.model.attention import KVCache, attend
from megatron_cogview.model.cogview import CogViewModel, LMLoss, ModelInputError, count_parameters
from megatron_cogview.model.norms import LayerNorm

__all__ = ["CogViewModel", "LMLoss", "ModelInputError", "KVCache", "LayerNorm", "attend", "count_parameters"]
