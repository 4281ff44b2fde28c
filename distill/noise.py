"""Noise levels for the DMD gradient and the fake-score loss."""
from __future__ import annotations

import torch

from eval.samplers import karras_sigma_at


def sample_dmd_sigma(
    n: int, *, min: float, max: float, rho: float, t_min: float, t_max: float, distribution: str = "ramp",
    p_mean: float = -1.2, p_std: float = 1.2, generator=None, device=None, ramp=karras_sigma_at,
) -> torch.Tensor:
    """n noise levels in [min, max]. ramp: sigma at t ~ U[t_min, t_max] on the ramp (the teacher's noise_ramp: Karras
    for EDM and VP teachers, linear in t for flow matching): DMD's timestep range [0.02 T, 0.98 T]. lognormal:
    ln sigma ~ N(p_mean, p_std^2), EDM's training draw (SiD's fake-score loss; logit-normal t for flow teachers),
    clamped to [min, max]."""
    if distribution == "lognormal":
        sigma = (p_mean + p_std * torch.randn(n, generator=generator, device=device)).exp()
        return sigma.clamp(min=min).clamp(max=max)  # max may be per sample (loss.sigma_up_to_student_step)
    t = t_min + (t_max - t_min) * torch.rand(n, generator=generator, device=device)
    return ramp(t, min, max, rho)
