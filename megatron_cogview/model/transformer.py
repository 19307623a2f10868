"""Tensor-parallel self-attention, MLP, the (Sandwich-LN / pre / post) layer and the layer stack."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from megatron_cogview.config import ModelConfig
from megatron_cogview.model.attention import AttentionArgs, KVCache, attend
from megatron_cogview.model.norms import LayerNorm
from megatron_cogview.parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron_cogview.parallel.random import REPLICATED, RNGTracker, dropout, keep_mask, mask_keep, replay_rng
from megatron_cogview.parallel.state import ParallelState

CheckpointFn = Callable[..., Any]


class BuildContext:
    """What every sub-module needs to construct itself (config, parallel state, init stream, placement)."""

    def __init__(
        self,
        config: ModelConfig,
        state: ParallelState,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        self.config, self.state, self.generator, self.device, self.dtype = config, state, generator, device, dtype

    @property
    def out_std(self) -> float:
        """Init std of the two output projections per layer: init_std / sqrt(2 L)."""
        return self.config.init_std / math.sqrt(2.0 * self.config.num_layers)

    def layernorm(self, pb_relax: bool) -> LayerNorm:
        c = self.config
        return LayerNorm(c.hidden_size, c.layernorm_epsilon, pb_relax=pb_relax, target_max=c.pb_relax_ln_target,
                         device=self.device, dtype=self.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with heads split over tp ranks (fused QKV, stride 3)."""

    def __init__(self, b: BuildContext) -> None:
        super().__init__()
        c, st = b.config, b.state
        self.kernel, self.alpha = c.attention_kernel, c.pb_relax_alpha
        self.heads_per_rank = c.num_attention_heads // st.tp_size
        self.head_dim = c.head_dim
        self.attention_dropout = c.attention_dropout
        kw = dict(generator=b.generator, device=b.device, dtype=b.dtype)
        self.query_key_value = ColumnParallelLinear(c.hidden_size, 3 * c.hidden_size, st, stride=3, init_std=c.init_std, **kw)
        self.dense = RowParallelLinear(c.hidden_size, c.hidden_size, st, init_std=b.out_std, **kw)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        tracker: RNGTracker | None,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> torch.Tensor:
        bsz, s, _ = x.shape
        qkv = self.query_key_value(x)  # [b, s, 3 * n_local * d] = [Q_r | K_r | V_r]
        qkv = qkv.view(bsz, s, 3, self.heads_per_rank, self.head_dim)  # [b, s, 3, n, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, n, s, d]
        if cache is not None:
            k, v = cache.append(layer_index, k, v)  # [b, n, past + s, d]
        args = AttentionArgs(causal=True, mask=mask, dropout_p=self.attention_dropout, training=self.training,
                             tracker=tracker)
        ctx = attend(self.kernel, q, k, v, args, self.alpha)  # [b, n, s, d]
        ctx = ctx.transpose(1, 2).reshape(bsz, s, self.heads_per_rank * self.head_dim)  # [b, s, h/tp]
        return self.dense(ctx)


class MLP(nn.Module):
    """h -> 4h (column-parallel) -> tanh-GELU -> h (row-parallel)."""

    def __init__(self, b: BuildContext) -> None:
        super().__init__()
        c, st = b.config, b.state
        kw = dict(generator=b.generator, device=b.device, dtype=b.dtype)
        self.dense_h_to_4h = ColumnParallelLinear(c.hidden_size, c.ffn_size, st, init_std=c.init_std, **kw)
        self.dense_4h_to_h = RowParallelLinear(c.ffn_size, c.hidden_size, st, init_std=b.out_std, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """One layer. sandwich: h = x + LN_c(Attn(LN_a(x))), y = h + LN_d(MLP(LN_b(h))) (CogView);
    pre: h = x + Attn(LN_a(x)), y = h + MLP(LN_b(h)); post: h = LN_a(x + Attn(x)), y = LN_b(h + MLP(h)).
    Branch outputs get hidden dropout (replicated stream) before the sandwich LN, as in CogView."""

    def __init__(self, b: BuildContext, index: int) -> None:
        super().__init__()
        c = b.config
        self.index, self.order, self.hidden_dropout = index, c.layernorm_order, c.hidden_dropout
        pb = c.pb_relax_layernorm == "all"
        self.input_layernorm = b.layernorm(pb)
        self.attention = SelfAttention(b)
        self.post_attention_layernorm = b.layernorm(pb)
        if self.order == "sandwich":
            self.third_layernorm = b.layernorm(pb)
        self.mlp = MLP(b)
        if self.order == "sandwich":
            self.fourth_layernorm = b.layernorm(pb)

    def _drop(self, x: torch.Tensor, tracker: RNGTracker | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:  # drawn beforehand (compiled layers): the same arithmetic as dropout()
            return x * mask * (1.0 / mask_keep(1.0 - self.hidden_dropout))
        gen = tracker.generator(REPLICATED) if tracker is not None else None
        return dropout(x, self.hidden_dropout, gen, self.training)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, tracker: RNGTracker | None, cache: KVCache | None = None,
        drop_masks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        d1, d2 = drop_masks if drop_masks is not None else (None, None)
        if self.order == "post":
            h = self.input_layernorm(x + self._drop(self.attention(x, mask, tracker, cache, self.index), tracker, d1))
            return self.post_attention_layernorm(h + self._drop(self.mlp(h), tracker, d2))
        a = self._drop(self.attention(self.input_layernorm(x), mask, tracker, cache, self.index), tracker, d1)
        h = x + (self.third_layernorm(a) if self.order == "sandwich" else a)
        m = self._drop(self.mlp(self.post_attention_layernorm(h)), tracker, d2)
        return h + (self.fourth_layernorm(m) if self.order == "sandwich" else m)


class Transformer(nn.Module):
    """Position embeddings + layer stack + final LayerNorm (names follow the original CogView)."""

    def __init__(self, b: BuildContext) -> None:
        super().__init__()
        c = b.config
        self.config = c
        self.checkpoint_fn: CheckpointFn | None = None  # e.g. deepspeed.checkpointing.checkpoint
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size, device=b.device, dtype=b.dtype)
        if b.device is None or torch.device(b.device).type != "meta":
            pos = torch.empty(c.max_position_embeddings, c.hidden_size).normal_(0.0, c.init_std, generator=b.generator)
            with torch.no_grad():
                self.position_embeddings.weight.copy_(pos)
        self.layers = nn.ModuleList(TransformerLayer(b, i) for i in range(c.num_layers))
        self._compiled: list[Callable[..., torch.Tensor]] | None = None  # built on first use (compile_layers)
        if c.layernorm_order != "post":
            self.final_layernorm = b.layernorm(c.pb_relax_layernorm in ("final", "all"))

    def _checkpointed(self, layer: TransformerLayer, x: torch.Tensor, mask: torch.Tensor | None,
                      tracker: RNGTracker | None) -> torch.Tensor:
        fn = replay_rng(lambda h: layer(h, mask, tracker), tracker)  # recompute draws the same dropout masks
        if self.checkpoint_fn is not None:
            return self.checkpoint_fn(fn, x)
        return torch_checkpoint(fn, x, use_reentrant=False)

    def _compiled_layers(self) -> list[Callable[..., torch.Tensor]]:
        if self._compiled is None:
            self._compiled = [torch.compile(layer) for layer in self.layers]  # a plain list: state_dict unchanged
        return self._compiled

    def _drop_masks(self, x: torch.Tensor, tracker: RNGTracker | None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Every layer's two hidden-dropout masks, drawn in eager order from the replicated stream."""
        p = self.config.hidden_dropout
        if p == 0.0:
            return None
        if tracker is None:
            raise ValueError("dropout with p > 0 in training needs a generator from an RNGTracker")
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype  # the branch outputs'
        masks = [keep_mask(x, 1.0 - p, tracker.generator(REPLICATED), dtype)
                 for _ in range(2 * len(self.layers))]  # as dropout() draws them
        return [(masks[2 * i], masks[2 * i + 1]) for i in range(len(self.layers))]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, tracker: RNGTracker | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        use_ckpt = self.config.checkpoint_activations and self.training and cache is None and torch.is_grad_enabled()
        if self.config.compile_layers and self.training and cache is None and not use_ckpt:
            masks = self._drop_masks(x, tracker)
            for i, layer in enumerate(self._compiled_layers()):
                x = layer(x, mask, tracker, None, masks[i] if masks is not None else None)
            return self.final_layernorm(x) if hasattr(self, "final_layernorm") else x
        for layer in self.layers:
            x = self._checkpointed(layer, x, mask, tracker) if use_ckpt else layer(x, mask, tracker, cache)
        if cache is not None:
            cache.advance(x.size(1))
        return self.final_layernorm(x) if hasattr(self, "final_layernorm") else x
