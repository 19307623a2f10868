"""EMA quantiser: hand-computed EMA step, straight-through gradient, nearest neighbours, init, dead-code re-init."""

from __future__ import annotations

import pytest
import torch

from tokenization.vqvae import quantizer as quantizer_module
from tokenization.vqvae.quantizer import EMAQuantizer


def _as_z(vectors: list[list[float]]) -> torch.Tensor:
    """Rows [n, d] -> encoder-output layout [1, d, 1, n]."""
    return torch.tensor(vectors).t().unsqueeze(0).unsqueeze(2)  # [n, d] -> [d, n] -> [1, d, 1, n]


def _quantizer(codebook: list[list[float]], decay: float, dead: float = 0.0) -> EMAQuantizer:
    q = EMAQuantizer(len(codebook), len(codebook[0]), decay=decay, eps=1e-5, dead_code_threshold=dead)
    q.codebook.copy_(torch.tensor(codebook))
    q.cluster_size.fill_(1.0)
    q.embed_avg.copy_(q.codebook)
    q.initialized.fill_(True)
    return q


def test_ema_update_matches_hand_computation() -> None:
    q = _quantizer([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]], decay=0.5)
    out = q(_as_z([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]))
    assert out.codes.flatten().tolist() == [0, 0, 1]
    assert out.counts.tolist() == [2.0, 1.0, 0.0]
    # cluster sizes: 0.5*1 + 0.5*[2, 1, 0]; sums: 0.5*old + 0.5*[[1, 1], [9, 9], [0, 0]]
    torch.testing.assert_close(q.cluster_size, torch.tensor([1.5, 1.0, 0.5]))
    torch.testing.assert_close(q.embed_avg, torch.tensor([[0.5, 0.5], [9.5, 9.5], [50.0, 50.0]]))
    # codebook = embed_avg / Laplace-smoothed cluster size: (n_k + eps) / (n + K eps) * n, n = 3, eps = 1e-5
    smoothed = [(c + 1e-5) / (3.0 + 3e-5) * 3.0 for c in (1.5, 1.0, 0.5)]
    expected = [[0.5 / smoothed[0]] * 2, [9.5 / smoothed[1]] * 2, [50.0 / smoothed[2]] * 2]
    torch.testing.assert_close(q.codebook, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        q.codebook, torch.tensor([[1 / 3, 1 / 3], [9.5, 9.5], [100.0, 100.0]]), rtol=1e-4, atol=1e-4
    )
    # the forward value is the pre-update codebook vector; commitment = mean squared distance to it
    torch.testing.assert_close(out.quantized[0, :, 0, :].t(), torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]))
    torch.testing.assert_close(out.commitment_loss, torch.tensor((1 + 1 + 2) / 6.0))


def test_eval_mode_does_not_update() -> None:
    q = _quantizer([[0.0, 0.0], [10.0, 10.0]], decay=0.5).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(_as_z([[1.0, 0.0], [9.0, 9.0]]))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_straight_through_gradient() -> None:
    torch.manual_seed(0)
    q = _quantizer([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]], decay=0.9)
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = q(z)
    weight = torch.randn_like(z)
    (out.quantized * weight).sum().backward()
    torch.testing.assert_close(z.grad, weight)  # identity gradient through the quantiser
    z.grad = None
    out = q.eval()(z)
    out.commitment_loss.backward()
    expected = 2 * (z.detach() - out.quantized.detach()) / z.numel()  # d/dz mean||z - sg(e)||^2
    torch.testing.assert_close(z.grad, expected)


def test_nearest_matches_brute_force_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(50, 8)
    flat = torch.randn(300, 8)
    expected = torch.cdist(flat, q.codebook).argmin(1)
    assert torch.equal(q.nearest(flat), expected)
    monkeypatch.setattr(quantizer_module, "_MAX_DISTANCE_ELEMENTS", 50 * 7)  # 7 rows per chunk
    assert torch.equal(q.nearest(flat), expected)


def test_first_batch_initialises_codebook_from_encoder_outputs() -> None:
    torch.manual_seed(0)
    q = EMAQuantizer(16, 4, decay=0.99)
    z = torch.randn(2, 4, 4, 4) * 3 + 5  # far from the random initial codebook
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert bool(q.initialized)
    # every code (before its EMA step) was an encoder output, so all stay within the data's range
    assert q.codebook.min() > flat.min() - 1e-4 and q.codebook.max() < flat.max() + 1e-4
    out = q(z)
    assert out.counts.gt(0).sum() >= 12  # most codes are used on the batch they came from


def test_dead_codes_are_revived_from_encoder_outputs() -> None:
    torch.manual_seed(0)
    q = _quantizer([[0.0, 0.0], [5.0, 5.0], [1000.0, 1000.0], [-1000.0, 0.0]], decay=0.9, dead=0.5)
    q.cluster_size.copy_(torch.tensor([2.0, 2.0, 0.01, 0.01]))  # codes 2, 3 have not been used for ages
    vectors = [[0.1, 0.0], [0.0, 0.2], [5.0, 5.1], [4.9, 5.0], [0.3, 0.1], [5.2, 4.8], [0.0, -0.1], [5.0, 5.0]]
    q(_as_z(vectors))
    data = torch.tensor(vectors)
    for code in (2, 3):
        assert torch.cdist(q.codebook[code : code + 1], data).min() < 1e-6  # now sits on an encoder output
        assert q.cluster_size[code] == pytest.approx(len(vectors) / 4)
    torch.testing.assert_close(q.embed_avg[2:], q.codebook[2:] * q.cluster_size[2:, None])
    out = q.eval()(_as_z(vectors))
    assert set(out.codes.flatten().tolist()) & {2, 3}  # revived codes win some vectors
    # live codes are untouched by the reset (only their EMA step applies)
    assert q.cluster_size[0] > 1.0 and q.cluster_size[1] > 1.0
