"""Isotropic Gaussian mixtures in any dimension, with the exact EDM denoiser for every sigma."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from teachers.base import Teacher, expand_sigma
from teachers.errors import ConfigError

WEIGHT_SUM_TOL = 1e-6


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] * N(means[k], stds[k]^2 I). means: (K, D); stds, weights: (K,)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    @property
    def std(self) -> float:
        """Per-dimension standard deviation of the whole mixture (EDM's sigma_data for this data)."""
        second_moment = (self.weights * (self.dim * self.stds**2 + (self.means**2).sum(1))).sum()
        mean = (self.weights[:, None] * self.means).sum(0)
        return math.sqrt(float(second_moment - (mean**2).sum()) / self.dim)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples of shape (n, D), float32."""
        modes = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator)
        return self.means[modes] + self.stds[modes, None] * eps

    def log_prob_per_mode(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log(w_k N(x; mu_k, (s_k^2 + sigma^2) I)) of shape (B, K), for x of shape (B, D)."""
        var = self.stds[None].to(x) ** 2 + sigma.reshape(-1, 1) ** 2
        dist2 = torch.cdist(x, self.means.to(x)) ** 2
        return self.weights.to(x).log()[None] - 0.5 * dist2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)


def mixture_from_lists(means, stds, weights) -> GaussianMixture:
    """Validate plain lists (from a config or the command line) and build the mixture."""
    for key, value in (("data.means", means), ("data.stds", stds), ("data.weights", weights)):
        if not _is_seq(value):
            raise ConfigError(f"{key}={value} must be a list")
    if not means:
        raise ConfigError("data.means is empty; give at least one point, e.g. data.means=[[0,0]]")
    if not all(_is_seq(m) for m in means):
        raise ConfigError(f"data.means={list(means)} must be a list of points (lists of numbers), e.g. [[0,0],[1,1]]")
    means = [_numbers(m, "data.means") for m in means]
    dims = sorted({len(m) for m in means})
    if len(dims) != 1 or dims[0] == 0:
        raise ConfigError(f"data.means has points of dimensions {dims}; every point must have the same dimension >= 1")
    stds, weights = _numbers(stds, "data.stds"), _numbers(weights, "data.weights")
    for key, values in (("data.stds", stds), ("data.weights", weights)):
        if len(values) != len(means):
            raise ConfigError(f"{key} has {len(values)} entries but data.means has {len(means)} modes; give one per mode")
    bad_std = [s for s in stds if not (s > 0 and math.isfinite(s))]
    if bad_std:
        raise ConfigError(f"data.stds contains {bad_std[0]}; every std must be a finite number > 0")
    bad_weight = [w for w in weights if not (w >= 0 and math.isfinite(w))]
    if bad_weight:
        raise ConfigError(f"data.weights contains {bad_weight[0]}; every weight must be a finite number >= 0")
    if abs(sum(weights) - 1) > WEIGHT_SUM_TOL:
        raise ConfigError(f"data.weights sum to {sum(weights):.6g}; they must sum to 1 (within {WEIGHT_SUM_TOL})")
    if not all(math.isfinite(x) for m in means for x in m):
        raise ConfigError("data.means contains a non-finite number; every coordinate must be finite")
    return GaussianMixture(torch.tensor(means), torch.tensor(stds), torch.tensor(weights))


def _numbers(values, key: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{key} contains {list(values)}; only numbers are allowed") from None


def _is_seq(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str)


class GMMDenoiser(Teacher):
    """The exact denoiser E[x0 | x0 + sigma * eps = x] of a Gaussian mixture: a teacher with no error."""

    family = "gmm"

    def __init__(self, mixture: GaussianMixture, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.mixture = mixture
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = mixture.std
        self.shape = (mixture.dim,)

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        sigma = expand_sigma(sigma, x).reshape(-1)
        resp = self.mixture.log_prob_per_mode(x, sigma).softmax(dim=1)  # (B, K)
        var = self.mixture.stds.to(x)[None] ** 2 + sigma[:, None] ** 2
        shrink = self.mixture.stds.to(x)[None] ** 2 / var  # (B, K): posterior pull towards x
        means = self.mixture.means.to(x)
        # E[x0 | x, k] = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k), averaged over the posterior of k.
        x0_per_mode = means[None] + shrink[..., None] * (x[:, None] - means[None])
        return (resp[..., None] * x0_per_mode).sum(1)
