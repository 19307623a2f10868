"""CogViewModel: vocab-parallel word embedding + learned positions + transformer + tied logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from megatron_cogview.config import ConfigError, ModelConfig
from megatron_cogview.model.attention import KVCache
from megatron_cogview.model.lm_loss import DEFAULT_CHUNK_ELEMENTS, fused_lm_loss
from megatron_cogview.model.sparse import sample_pattern
from megatron_cogview.model.transformer import BuildContext, Transformer
from megatron_cogview.parallel.layers import VocabParallelEmbedding
from megatron_cogview.parallel.mappings import copy_to_region, gather_from_region
from megatron_cogview.parallel.random import REPLICATED, RNGTracker, dropout
from megatron_cogview.parallel.state import ParallelState, require_state


class ModelInputError(ConfigError):
    """Tokens or positions the model cannot take (out of the vocabulary or the position table)."""


@dataclass
class LMLoss:
    """Weighted loss sum (differentiable) and the per-token cross entropy [b, s] (fp32, detached)."""

    total: torch.Tensor
    per_token: torch.Tensor


class CogViewModel(nn.Module):
    """The CogView GPT over one stream of text and image tokens, tensor-parallel over `state`."""

    def __init__(
        self,
        config: ModelConfig,
        state: ParallelState,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        state = require_state(state, "CogViewModel")
        config.check_tensor_parallel(state.tp_size)
        self.config, self.state = config, state
        meta = device is not None and torch.device(device).type == "meta"
        generator = None if meta else torch.Generator().manual_seed(config.seed)
        b = BuildContext(config, state, generator, device, dtype)
        self.word_embeddings = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, state, init_std=config.init_std, generator=generator,
            device=device, dtype=dtype,
        )
        self.transformer = Transformer(b)
        rng_device = torch.device("cpu") if device is None or meta else torch.device(device)
        self.rng = RNGTracker.for_model(config.seed, state, rng_device)
        self.validate_inputs = True
        self.loss_chunk_elements = DEFAULT_CHUNK_ELEMENTS  # logits elements per chunk of the fused loss

    def _apply(self, fn, recurse=True):
        """.to() / .cuda() / .half(): the RNG tracker follows the parameters to their device."""
        out = super()._apply(fn, recurse)
        device = self.word_embeddings.weight.device
        if device.type != "meta" and device != self.rng.device:
            self.rng = self.rng.to(device)
        return out

    # ---- core --------------------------------------------------------------------------------
    def _check(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> None:
        c = self.config
        if tokens.dim() != 2:
            raise ModelInputError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        lo, hi, top = torch.stack([tokens.min(), tokens.max(), position_ids.max()]).tolist()  # one host sync
        if lo < 0 or hi >= c.vocab_size:
            raise ModelInputError(
                f"token ids span [{lo}, {hi}] but the vocabulary is [0, {c.vocab_size - 1}]; "
                "check that the data was made with this model's token layout"
            )
        if top >= c.max_position_embeddings:
            raise ModelInputError(
                f"position {top} is outside the position table of {c.max_position_embeddings} rows; "
                f"sequences may be at most {c.max_position_embeddings} tokens (raise max_position_embeddings)"
            )

    def hidden_states(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states [b, s, h] (after the final LayerNorm); `cache` makes it incremental."""
        offset = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(offset, offset + tokens.size(1), device=tokens.device).unsqueeze(0)
        if self.validate_inputs:
            self._check(tokens, position_ids)
        x = self.word_embeddings(tokens) + self.transformer.position_embeddings(position_ids)  # [b, s, h]
        x = dropout(x, self.config.hidden_dropout, self.rng.generator(REPLICATED), self.training)
        if self.config.attention_kernel == "sparse" and self.training and cache is None and mask is None:
            # one pattern for every layer, from the replicated stream: all tp ranks agree
            return self.transformer(x, sample_pattern(tokens, self.config, self.rng.generator(REPLICATED)), self.rng)
        return self.transformer(x, mask, self.rng, cache)

    def logits(self, hidden: torch.Tensor, gather: bool = False) -> torch.Tensor:
        """Tied output logits: [b, s, V/tp] on this rank's vocab slice, or [b, s, V] when gather."""
        h = copy_to_region(hidden, self.state.tp_group)
        local = torch.matmul(h, self.word_embeddings.weight.t())
        return gather_from_region(local, self.state.tp_group) if gather else local

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        gather: bool = False,
        labels: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
    ) -> torch.Tensor | LMLoss:
        """Logits for `tokens` (see `logits`), or the LMLoss when `labels` are given (training)."""
        if labels is not None:
            if loss_weights is None:
                loss_weights = torch.ones(labels.shape, device=labels.device)
            return self.lm_loss(tokens, labels, loss_weights, position_ids, mask)
        return self.logits(self.hidden_states(tokens, position_ids, mask, cache), gather)

    def lm_loss(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        loss_weights: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> LMLoss:
        """Next-token cross entropy weighted per label, without materialising the full logits."""
        hidden = self.hidden_states(tokens, position_ids, mask)  # [b, s, h]
        h = copy_to_region(hidden.reshape(-1, hidden.size(-1)), self.state.tp_group)  # [b*s, h]
        total, per_token = fused_lm_loss(
            h, self.word_embeddings.weight, labels.reshape(-1), loss_weights.reshape(-1), self.state.tp_group,
            self.loss_chunk_elements,
        )
        return LMLoss(total=total, per_token=per_token.view(labels.shape))

    # ---- helpers -----------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to max_len tokens (default: position table)."""
        c = self.config
        ref = self.word_embeddings.weight
        return KVCache(
            c.num_layers, batch_size, c.num_attention_heads // self.state.tp_size,
            max_len or c.max_position_embeddings, c.head_dim, device=ref.device, dtype=dtype or ref.dtype,
        )

    def set_checkpoint_fn(self, fn) -> None:
        """Use `fn` (e.g. deepspeed.checkpointing.checkpoint) for activation checkpointing."""
        self.transformer.checkpoint_fn = fn


def count_parameters(config: ModelConfig, tp_size: int = 1) -> int:
    """Exact parameter count of the model (tp_size=1) or of one tp rank, built on the meta device."""
    state = ParallelState.single()
    if tp_size > 1:  # construction on meta never communicates, so a rank-0 description is enough
        state = ParallelState(tp_size=tp_size, tp_rank=0, dp_size=1, dp_rank=0, rank=0, world_size=tp_size,
                              tp_ranks=tuple(range(tp_size)))
    model = CogViewModel(config, state, device="meta")
    return sum(p.numel() for p in model.parameters())
