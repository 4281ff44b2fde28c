"""The one convention for every model: the EDM denoiser (Karras et al. 2022)."""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """D(x, sigma, cond) -> estimate of x0 for x = x0 + sigma * eps.

    x: float32 of shape (B, *shape); sigma: float32 of shape (B,) or a scalar.
    """

    sigma_min: float
    sigma_max: float
    sigma_data: float
    shape: tuple[int, ...]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor: ...


def expand_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) sigma to x's rank: (B, 1, ..., 1)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def student_input(denoiser, noise: torch.Tensor, sigma) -> torch.Tensor:
    """A student's first input from noise z ~ N(0, I) at its first sigma: sigma z (DMD's G(z) = D(sigma_max z)), or
    sqrt(1 + sigma^2) z for a denoiser with `vp_noise_input` (the latent adapter): then its network sees z itself,
    as stock diffusers pipelines feed it at t = 999, so an exported student makes the same latents there."""
    sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
    return noise * ((1 + sigma**2).sqrt() if getattr(denoiser, "vp_noise_input", False) else sigma)


def score(x0: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """Score of the noised density from a denoiser output: (D(x) - x) / sigma^2 (EDM eq. 3)."""
    return (x0 - x) / expand_sigma(sigma, x) ** 2


def edm_precond(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """c_skip, c_out, c_in, c_noise of EDM Table 1."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (EDM eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


LOSS_WEIGHTINGS = ("edm", "epsilon", "v_prediction", "sample")


def denoising_loss_weight(sigma: torch.Tensor, sigma_data: float, weighting: str) -> torch.Tensor:
    """The weight on ||x0_pred - x0||^2 that makes the loss the MSE of what a network predicts: EDM's lambda(sigma)
    for EDM-preconditioned nets; 1/sigma^2 for eps (x0 error = sigma * eps error; EDM Table 1's VP lambda, DMD2's
    eps-MSE); (1 + sigma^2)/sigma^2 for VP v-prediction (x0 error = sigma/sqrt(1+sigma^2) * v error); 1 for x0."""
    if weighting == "edm":
        return edm_loss_weight(sigma, sigma_data)
    if weighting == "epsilon":
        return 1 / sigma**2
    if weighting == "v_prediction":
        return (1 + sigma**2) / sigma**2
    if weighting == "sample":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown loss weighting '{weighting}'; allowed: {', '.join(LOSS_WEIGHTINGS)}")


def sample_log_normal_sigma(n: int, p_mean: float, p_std: float, generator=None, device=None) -> torch.Tensor:
    """ln(sigma) ~ N(P_mean, P_std^2), EDM's training noise distribution (Table 1)."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of a (B,) tensor into (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = t[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)
