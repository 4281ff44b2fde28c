"""Classifier-free guidance (Ho & Salimans 2022) on a conditional denoiser, in x0 form."""
from __future__ import annotations

import torch
from torch import nn

from teachers.base import Teacher
from teachers.errors import ConfigError


def guided_x0(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + w (cond - uncond); linear in the output, so the same for x0, eps and score."""
    return x0_uncond + scale * (x0_cond - x0_uncond)


def check_guidable(denoiser: Teacher, scale: float, key: str = "loss.guidance_scale") -> None:
    """CFG needs a null condition: a class-conditional teacher trained with a null class, or a text teacher."""
    if denoiser.null_class is None and not denoiser.text_conditional:
        raise ConfigError(
            f"{key}={scale} needs a class-conditional teacher trained with a null class, or a "
            f"text-to-image teacher; this teacher is unconditional (use {key}=1)"
        )
    denoiser.check_guidance(scale)


def guided_forward(denoiser: Teacher, scale: float, x: torch.Tensor, sigma, cond) -> torch.Tensor:
    """D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)), both branches as one batch."""
    null = denoiser.null_condition(cond)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    x0 = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null]))
    x0_cond, x0_uncond = x0.chunk(2)
    return guided_x0(x0_cond, x0_uncond, scale)


class GuidedDenoiser(Teacher, nn.Module):
    """D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null)); DMD's real score with CFG.

    The null condition is the teacher's own (`null_condition`: its label-dropout class, or the empty prompt's
    embedding); both branches run as one batch. Everything else of the protocol is the teacher's.
    """

    def __init__(self, denoiser: Teacher, scale: float):
        nn.Module.__init__(self)
        check_guidable(denoiser, scale)
        self.denoiser, self.scale = denoiser, float(scale)
        for name in ("family", "sigma_min", "sigma_max", "sigma_data", "shape", "num_classes", "null_class", "text_conditional", "latent"):
            setattr(self, name, getattr(denoiser, name))

    @property
    def unguided(self) -> Teacher:
        return self.denoiser

    def student_input(self, noise: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoiser.student_input(noise, sigma)

    def sampling_sigmas(self, num_steps: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return self.denoiser.sampling_sigmas(num_steps, shape)

    def noise_ramp(self, u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
        return self.denoiser.noise_ramp(u, sigma_min, sigma_max, rho)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        return guided_forward(self.denoiser, self.scale, x, sigma, cond)
