"""Distillation losses: small functions on tensors that return per-sample values (shape (B,)), each the mean over a
sample's elements, as DMD2's code reduces them, so a term's weight carries across resolutions."""
from __future__ import annotations

import torch


DMD_NORMALIZER_EPS = 1e-8
SID_NORMALIZER_EPS = 1e-5  # SiD's code clips its weight factor here


def element_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over each sample's elements: (B, ...) -> (B,)."""
    return values.flatten(1).mean(1)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast against `like` (B, ...)."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """(x0_fake - x0_real) / mean|x - x0_real| per sample: DMD eq. 8 in x0 form, gradient of the KL w.r.t. x."""
    normalizer = element_mean((x - x0_real).abs()).clamp_min(DMD_NORMALIZER_EPS)
    return (x0_fake - x0_real) / per_sample(normalizer, x)


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 mean(x - stopgrad(x - grad))^2 per sample, whose gradient w.r.t. x is grad / (elements per sample)."""
    target = (x - grad).detach()
    return 0.5 * element_mean((x - target) ** 2)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, distance: str, pseudo_huber_c: float = 0.03) -> torch.Tensor:
    """Distance between G(z_ref) and the teacher's ODE output y_ref per sample (DMD eq. 9, pixel form): the mean
    squared error (l2), or sqrt(mse + c^2) - c (pseudo_huber, Song & Dhariwal 2023, on the per-element scale)."""
    mse = element_mean((pred - target) ** 2)
    if distance == "l2":
        return mse
    if distance == "pseudo_huber":  # robust to outliers
        return (mse + pseudo_huber_c**2).sqrt() - pseudo_huber_c
    raise ValueError(f"unknown regression distance '{distance}'; allowed: l2, pseudo_huber")


def sid_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's generator loss per sample (Zhou et al. 2024, Algorithm 1): mean((1 - alpha) ||d||^2 + d (x0_fake - x))
    with d = x0_real - x0_fake, divided by mean|x - x0_real| (no gradient through it). x0_real and x0_fake are read
    at x + sigma eps with gradients through their inputs (not into the networks' weights)."""
    d = x0_real - x0_fake
    normalizer = element_mean((x - x0_real).abs()).detach().clamp_min(SID_NORMALIZER_EPS)
    return element_mean((1 - alpha) * d**2 + d * (x0_fake - x)) / normalizer
