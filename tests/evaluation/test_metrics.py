"""Metric kernels vs independent references: scipy's sqrtm, closed forms, and predicted changes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megatron_cogview.evaluation.metrics import (
    fid_from_features,
    frechet_distance,
    gaussian_blur,
    gaussian_stats,
    inception_score,
    wilson_interval,
)

scipy_linalg = pytest.importorskip("scipy.linalg")


def scipy_fid(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """The pytorch-fid formula: ||mu1-mu2||^2 + tr(C1) + tr(C2) - 2 tr(sqrtm(C1 C2))."""
    root = scipy_linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real)


def test_frechet_matches_scipy_sqrtm_on_random_features() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 16, generator=g, dtype=torch.float64)
    b = torch.randn(300, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.5 + 0.3
    mu1, c1 = gaussian_stats(a)
    mu2, c2 = gaussian_stats(b)
    ref = scipy_fid(mu1.numpy(), c1.numpy(), mu2.numpy(), c2.numpy())
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-7)
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-7)
    np.testing.assert_allclose(c1.numpy(), np.cov(a.numpy(), rowvar=False), rtol=1e-10)


def test_frechet_closed_form_for_diagonal_covariances() -> None:
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.5])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])  # variances
    closed = float(((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(closed, rel=1e-12)


def test_set_against_itself_is_zero_and_mean_shift_adds_its_square() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 32, generator=g)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.zeros(32)
    shift[:4] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    assert fid_from_features(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)
    # rank-deficient covariances (fewer images than features) stay finite and non-negative
    few = torch.randn(10, 64, generator=g)
    assert 0 <= fid_from_features(few, few + 1) < math.inf


def _high_frequency_energy(images: torch.Tensor) -> float:
    x = images.double()
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


def test_blur_radius_zero_is_identity_and_larger_radii_remove_high_frequencies() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(images, 0), images)
    energies = [_high_frequency_energy(gaussian_blur(images, k)) for k in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(energies, energies[1:])), energies
    blurred = gaussian_blur(images, 2)
    assert blurred.dtype == torch.uint8 and blurred.shape == images.shape
    # a constant image stays constant (the kernel sums to 1, borders are reflected)
    flat = torch.full((1, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 4), flat)
    # it is a Gaussian: the impulse response of a 1-px blur matches exp(-x^2/2) normalised
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[..., 20, 20] = 1.0
    row = gaussian_blur(impulse, 1.0)[0, 0, 20, 17:24].double()
    x = torch.arange(-3, 4, dtype=torch.float64)
    ref = torch.exp(-0.5 * x**2) / torch.exp(-0.5 * x**2).sum()
    torch.testing.assert_close(row / row.sum(), ref, rtol=1e-5, atol=1e-6)


def test_inception_score_uniform_is_one_and_confident_spread_is_c() -> None:
    assert inception_score(torch.full((100, 7), 1 / 7))[0] == pytest.approx(1.0, abs=1e-9)
    c = 5
    confident = torch.eye(c).repeat(20, 1)  # every split holds each class equally often
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    one_class = torch.eye(c)[torch.zeros(50, dtype=torch.long)]
    assert inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-9)


def test_wilson_interval() -> None:
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-3)  # the textbook 10/10 value
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
