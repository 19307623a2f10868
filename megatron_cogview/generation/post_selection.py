"""Post-selection (self-reranking): CapLoss of each candidate image under a caption model, keep the best.

CapLoss(x, t) = -(1/|t|) sum_i log p(t_i | x, t_<i) on `[BASE] [BOI1] image [EOI1] [ROI1] text`, by
teacher forcing: one forward per chunk, logits only at the positions that predict caption tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megatron_cogview.generation.config import GenerationConfig, require
from megatron_cogview.generation.decoding import inference
from megatron_cogview.model import CogViewModel
from megatron_cogview.model.lm_loss import fused_lm_loss


@dataclass(frozen=True)
class CaptionTemplate:
    """The caption model's sequence `head image middle text` as command ids (tasks.captioning.caption_template
    derives them from the image2text template: head [BASE] [BOI1], middle [EOI1] [ROI1])."""

    head: tuple[int, ...]  # ids before the image
    middle: tuple[int, ...]  # ids between the image and the caption

    def first_label(self, num_image_tokens: int) -> int:
        """Sequence index whose output predicts the first caption token (the last id of `middle`)."""
        return len(self.head) + num_image_tokens + len(self.middle) - 1


@dataclass(frozen=True)
class Selection:
    """Best candidates per prompt (lowest CapLoss first) and every candidate's CapLoss."""

    indices: torch.Tensor  # long [P, keep]
    scores: torch.Tensor  # fp32 [P, N]


def _check(model: CogViewModel, images: torch.Tensor, texts: Sequence[Sequence[int]], template: CaptionTemplate) -> None:
    c = model.config
    require(images.dim() == 2 and images.size(0) > 0, f"images must be ids [N, n], got shape {tuple(images.shape)}")
    require(len(texts) == images.size(0), f"got {len(texts)} captions for {images.size(0)} images; pass one per image")
    require(all(len(t) > 0 for t in texts), "a caption is empty; CapLoss needs at least one text token")
    longest = template.first_label(images.size(1)) + max(len(t) for t in texts)  # the last caption token is never an input
    require(longest <= c.max_position_embeddings,
            f"caption sequences need {longest} positions but the model has {c.max_position_embeddings}; shorten the captions")
    ids = torch.cat([images.reshape(-1), torch.tensor([i for t in texts for i in t], dtype=torch.long)])
    require(int(ids.min()) >= 0 and int(ids.max()) < c.vocab_size, "image or caption ids lie outside the vocabulary")


def caption_loss(
    model: CogViewModel,
    images: torch.Tensor,
    texts: Sequence[Sequence[int]],
    template: CaptionTemplate,
    config: GenerationConfig | None = None,
) -> torch.Tensor:
    """CapLoss fp32 [N] of images (global ids [N, n]) with captions (global text ids), batched."""
    images = images.long().cpu()
    _check(model, images, texts, template)
    cap = (config or GenerationConfig()).max_inference_batch_size
    device = model.word_embeddings.weight.device
    out = []
    with inference(model):
        for start in range(0, images.size(0), cap):
            out.append(_chunk_loss(model, images[start : start + cap], texts[start : start + cap], template, device))
    return torch.cat(out)


def _chunk_loss(
    model: CogViewModel, images: torch.Tensor, texts: Sequence[Sequence[int]], template: CaptionTemplate, device: torch.device
) -> torch.Tensor:
    c, n = images.shape
    width = max(len(t) for t in texts)
    text = torch.zeros(c, width, dtype=torch.long)  # [c, T], right-padded (causal: padding never leaks back)
    weights = torch.zeros(c, width)
    for i, t in enumerate(texts):
        text[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        weights[i, : len(t)] = 1.0
    head = torch.tensor(template.head, dtype=torch.long).expand(c, len(template.head))
    middle = torch.tensor(template.middle, dtype=torch.long).expand(c, len(template.middle))
    seq = torch.cat([head, images, middle, text], dim=1).to(device)  # [c, first + 1 + T]
    first = template.first_label(n)  # the position of [ROI1], which predicts the first caption token
    hidden = model.hidden_states(seq[:, :-1])  # [c, first + T, h]
    h = hidden[:, first:].reshape(c * width, -1)  # [c*T, h]
    _, per_token = fused_lm_loss(h, model.word_embeddings.weight, text.to(device).reshape(-1),
                                 weights.to(device).reshape(-1), model.state.tp_group)
    nll = per_token.view(c, width) * weights.to(device)  # [c, T]
    return (nll.sum(1) / weights.to(device).sum(1)).float().cpu()


def rerank(scores: torch.Tensor, keep: int) -> Selection:
    """Keep the `keep` lowest-CapLoss candidates of each row of scores [P, N] (stable for ties)."""
    require(scores.dim() == 2, f"scores must be [prompts, candidates], got shape {tuple(scores.shape)}")
    require(1 <= keep <= scores.size(1), f"keep={keep} must be between 1 and the {scores.size(1)} candidates")
    order = torch.sort(scores, dim=1, stable=True).indices
    return Selection(order[:, :keep].contiguous(), scores)


def post_select(
    model: CogViewModel,
    candidates: torch.Tensor,
    captions: Sequence[Sequence[int]],
    template: CaptionTemplate,
    keep: int,
    config: GenerationConfig | None = None,
) -> Selection:
    """Rerank candidates (global image ids [P, N, n]) of each prompt by CapLoss with its caption; keep the best."""
    require(candidates.dim() == 3, f"candidates must be [prompts, N, n], got shape {tuple(candidates.shape)}")
    p, n_cand, n = candidates.shape
    require(len(captions) == p, f"got {len(captions)} captions for {p} prompts")
    texts = [captions[i] for i in range(p) for _ in range(n_cand)]
    scores = caption_loss(model, candidates.reshape(p * n_cand, n), texts, template, config).view(p, n_cand)
    return rerank(scores, keep)
