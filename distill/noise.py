"""Noise levels for the DMD gradient and the fake-score loss."""
from __future__ import annotations

import torch


def karras_sigma_at(t: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Sigma at ramp position t in [0, 1] of the Karras schedule (t=0: sigma_max, t=1: sigma_min; EDM eq. 5)."""
    inv_rho = 1 / rho
    return (sigma_max**inv_rho + t * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho


def sample_dmd_sigma(
    n: int, *, min: float, max: float, rho: float, t_min: float, t_max: float, generator=None, device=None
) -> torch.Tensor:
    """sigma at t ~ U[t_min, t_max] on the Karras ramp: DMD's timestep range [0.02 T, 0.98 T]."""
    t = t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device)
    return karras_sigma_at(t, min, max, rho)
