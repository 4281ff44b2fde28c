"""The EDM denoising loss: trains a teacher, and (on student samples) the fake score."""
from __future__ import annotations

import torch

from teachers.base import denoising_loss_weight, expand_sigma


def edm_denoising_loss(
    denoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, *, sigma_data: float, cond=None
) -> torch.Tensor:
    """Per-sample lambda(sigma) * mean ||D(x0 + sigma n, sigma) - x0||^2 (EDM eq. 2 and 8); shape (B,).

    sigma_data is passed in because the denoiser may be wrapped (DDP) and hide its attributes."""
    x_t = x0 + expand_sigma(sigma, x0) * noise
    return edm_weighted_error(denoiser(x_t, sigma, cond), x0, sigma, sigma_data)


def edm_weighted_error(x0_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """Per-sample lambda(sigma) * mean ||x0_pred - x0||^2 (EDM eq. 8 weighting); shape (B,)."""
    return weighted_denoising_error(x0_pred, x0, sigma, sigma_data, "edm")


def weighted_denoising_error(x0_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float, weighting: str) -> torch.Tensor:
    """Per-sample w(sigma) * mean ||x0_pred - x0||^2 with the weighting of denoising_loss_weight; shape (B,)."""
    return denoising_loss_weight(sigma, sigma_data, weighting) * ((x0_pred - x0) ** 2).flatten(1).mean(1)
