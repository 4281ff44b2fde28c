"""Isotropic Gaussian mixtures in any dimension, with the exact EDM denoiser for every sigma."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from teachers.base import Teacher, expand_sigma
from teachers.checks import mixture_lists


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
    means, stds, weights = mixture_lists(means, stds, weights)
    return GaussianMixture(torch.tensor(means), torch.tensor(stds), torch.tensor(weights))


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
