"""Metric kernels: Gaussian blur, Fréchet distance, Inception Score, Wilson intervals (fp64 where it matters)."""
from __future__ import annotations

import math

import torch


def gaussian_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Blur uint8 or float images [N, 3, H, W] with a Gaussian of std `radius` px (0 = identity), same dtype.

    This is the FID-k protocol (DALL-E, CogView): real and generated images are both blurred before feature
    extraction. The kernel is truncated at 3 std and the borders are reflected (PIL's GaussianBlur semantics).
    """
    if radius < 0:
        raise ValueError(f"blur radius {radius} must be >= 0")
    if radius == 0:
        return images
    half = max(1, math.ceil(3 * radius))
    half = min(half, images.size(-1) - 1, images.size(-2) - 1)
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / radius) ** 2)
    kernel = (kernel / kernel.sum()).float()
    c = images.size(1)
    out = images.float()
    out = torch.nn.functional.pad(out, (half, half, 0, 0), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.pad(out, (0, 0, half, half), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if images.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], unbiased covariance [d, d]) of features [N, d], in fp64."""
    if features.dim() != 2 or features.size(0) < 2:
        raise ValueError(f"need at least 2 feature rows [N, d] for a covariance, got shape {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.size(0) - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) between two Gaussians, in fp64.

    tr((C1 C2)^(1/2)) = tr((S C2 S)^(1/2)) with S = C1^(1/2): a symmetric PSD matrix, so both roots come
    from eigh and stay real and stable even for rank-deficient covariances (few images, many features).
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"mismatched Gaussian statistics: {tuple(mu1.shape)}/{tuple(cov1.shape)} vs "
                         f"{tuple(mu2.shape)}/{tuple(cov2.shape)}")
    s = _psd_sqrt(cov1)
    cross = torch.linalg.eigvalsh((s @ cov2 @ s + (s @ cov2 @ s).T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return max(float(value), 0.0)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N, d] and [M, d]."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` equal chunks of exp(E_x KL(p(y|x) || p(y))), from class probabilities [N, C]."""
    if probs.dim() != 2 or probs.size(0) < 1:
        raise ValueError(f"need class probabilities [N, C], got shape {tuple(probs.shape)}")
    p = probs.double()
    splits = max(1, min(splits, p.size(0)))
    scores = []
    for chunk in torch.tensor_split(p, splits):
        marginal = chunk.mean(0, keepdim=True)
        kl = (chunk * (torch.log(chunk.clamp(min=1e-30)) - torch.log(marginal.clamp(min=1e-30)))).sum(1)
        scores.append(math.exp(float(kl.mean())))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False))


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% confidence interval of a binomial proportion (sensible at 0% and 100%)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
