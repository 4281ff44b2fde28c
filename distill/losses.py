"""DMD losses: small functions on tensors that return per-sample values (shape (B,))."""
from __future__ import annotations

import torch


DMD_NORMALIZER_EPS = 1e-8


def dmd_gradient(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """(x0_fake - x0_real) / mean|x - x0_real| per sample: DMD eq. 8 in x0 form, gradient of the KL w.r.t. x."""
    normalizer = (x - x0_real).abs().flatten(1).mean(1).clamp_min(DMD_NORMALIZER_EPS)
    return (x0_fake - x0_real) / normalizer.reshape(-1, *([1] * (x.ndim - 1)))


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 ||x - stopgrad(x - grad)||^2 per sample, whose gradient w.r.t. x is exactly grad."""
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).flatten(1).sum(1)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, distance: str, pseudo_huber_c: float = 0.03) -> torch.Tensor:
    """Distance between G(z_ref) and the teacher's ODE output y_ref per sample (DMD eq. 9, pixel form)."""
    err2 = ((pred - target) ** 2).flatten(1).sum(1)
    if distance == "l2":
        return err2
    if distance == "pseudo_huber":
        # sqrt(||d||^2 + c^2) - c, robust to outliers (Song & Dhariwal 2023).
        return (err2 + pseudo_huber_c**2).sqrt() - pseudo_huber_c
    raise ValueError(f"unknown regression distance '{distance}'; allowed: l2, pseudo_huber")
