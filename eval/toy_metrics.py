"""Quality of samples from a known Gaussian mixture: FD, MMD, mode recall, mode weights."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

from eval.fid import frechet
from teachers.gmm import GaussianMixture


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of samples (N, D), in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def fd(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two sample sets (the FID formula, in data space)."""
    return frechet(*gaussian_stats(x), *gaussian_stats(y))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with an RBF kernel (Gretton et al. 2012); bandwidth defaults to the median distance."""
    x, y = x.double(), y.double()
    if bandwidth is None:
        bandwidth = float(torch.cdist(y, y).median())
    gamma = 1 / (2 * bandwidth**2)
    k_xx, k_yy, k_xy = (torch.exp(-gamma * torch.cdist(a, b) ** 2) for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(term_xx + term_yy - 2 * k_xy.mean())


def assign_modes(mixture: GaussianMixture, x: torch.Tensor, radius_quantile: float) -> torch.Tensor:
    """Most likely mode of each sample (N,), or -1 beyond the radius_quantile chi-square radius."""
    x = x.double()
    means, stds = mixture.means.double(), mixture.stds.double()
    log_prob = mixture.log_prob_per_mode(x, torch.zeros(len(x), dtype=torch.float64))
    modes = log_prob.argmax(1)
    dist2 = ((x - means[modes]) ** 2).sum(1) / stds[modes] ** 2
    limit = chi2.ppf(radius_quantile, df=mixture.dim)
    return torch.where(dist2 <= limit, modes, torch.full_like(modes, -1))


def mode_shares(mixture: GaussianMixture, x: torch.Tensor, radius_quantile: float) -> torch.Tensor:
    """Share of samples that land in each mode (K,); the rest fell between modes."""
    modes = assign_modes(mixture, x, radius_quantile)
    counts = torch.bincount(modes[modes >= 0], minlength=mixture.num_modes)
    return counts.double() / len(x)


def mode_recall(shares: torch.Tensor, weights: torch.Tensor, min_share: float) -> float:
    """Fraction of modes that receive at least min_share of their true weight."""
    return float((shares >= min_share * weights.double()).double().mean())


def mode_weight_error(shares: torch.Tensor, weights: torch.Tensor) -> float:
    """Total variation between true mode weights and sample shares, off-mode mass counted as error."""
    off_mode = 1 - shares.sum()
    return float(0.5 * ((shares - weights.double()).abs().sum() + off_mode))


def toy_metrics(
    mixture: GaussianMixture,
    samples: torch.Tensor,
    reference: torch.Tensor,
    *,
    mode_recall_share: float,
    mode_radius_quantile: float,
    mmd_max_samples: int,
) -> dict[str, float | list[float]]:
    """All toy figures of one sample set (N, D) against fresh mixture samples (M, D)."""
    shares = mode_shares(mixture, samples, mode_radius_quantile)
    return {
        "fd": fd(samples.numpy(), reference.numpy()),
        "mmd": mmd_rbf(samples[:mmd_max_samples], reference[:mmd_max_samples]),
        "mode_recall": mode_recall(shares, mixture.weights, mode_recall_share),
        "mode_weight_error": mode_weight_error(shares, mixture.weights),
        "off_mode_share": float(1 - shares.sum()),
        "mode_shares": [round(float(s), 5) for s in shares],
    }
