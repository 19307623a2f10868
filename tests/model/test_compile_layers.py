"""compile_layers: torch.compile'd transformer layers train exactly like the eager ones (same dropout masks)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_cogview.config import ModelConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState

CFG = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=64, max_position_embeddings=17,
                  hidden_dropout=0.1, attention_dropout=0.1)


def _two_steps(cfg: ModelConfig) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Loss and grads of two training forwards/backwards (the dropout stream advances between them)."""
    model = CogViewModel(cfg, ParallelState.single()).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    out = []
    for _ in range(2):
        loss = model.lm_loss(tokens, labels, torch.ones(2, 16)).total / labels.numel()
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    return out


@pytest.mark.slow
def test_compiled_layers_match_eager_loss_and_grads() -> None:
    torch.manual_seed(0)
    eager = _two_steps(CFG)
    compiled = _two_steps(dataclasses.replace(CFG, compile_layers=True))
    for (loss_e, grads_e), (loss_c, grads_c) in zip(eager, compiled):
        assert loss_c == pytest.approx(loss_e, rel=1e-5)
        assert grads_c.keys() == grads_e.keys()
        for name, ge in grads_e.items():
            torch.testing.assert_close(grads_c[name], ge, rtol=1e-4, atol=1e-6, msg=name)
    assert eager[0][0] != eager[1][0]  # the masks differ between steps, so the match is not a fixed mask


def test_compile_layers_leaves_state_dict_and_eval_alone() -> None:
    model = CogViewModel(dataclasses.replace(CFG, compile_layers=True), ParallelState.single())
    reference = CogViewModel(CFG, ParallelState.single())
    assert model.state_dict().keys() == reference.state_dict().keys()
    tokens = torch.randint(0, CFG.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), reference.eval()(tokens), rtol=0, atol=0)
    assert model.transformer._compiled is None  # evaluation never compiled anything
