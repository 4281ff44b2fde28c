"""Noise levels for the DMD gradient and the fake-score loss."""
from __future__ import annotations

import torch

from eval.samplers import karras_sigma_at


def sample_dmd_sigma(
    n: int, *, min: float, max: float, rho: float, t_min: float, t_max: float, generator=None, device=None, ramp=karras_sigma_at
) -> torch.Tensor:
    """sigma at t ~ U[t_min, t_max] on the ramp (the teacher's noise_ramp: Karras for EDM and VP teachers, linear in
    t for flow matching): DMD's timestep range [0.02 T, 0.98 T]."""
    t = t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device)
    return ramp(t, min, max, rho)
