"""A diffusers UNet2DModel and its DDPM-family scheduler config as one EDM denoiser.

As k-diffusion's `external.py`: the adapter owns the alpha_bar -> sigma map, the timestep
lookup, the eps / v / sample conversion and the class labels. Nothing outside `teachers/`
knows the parameterisation. On disk it is a diffusers DDPMPipeline folder
(model_index.json, unet/, scheduler/) plus `distill.json` with the EDM constants.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch import nn

from teachers.base import expand_sigma
from teachers.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
EXTRA_FILE = "distill.json"  # sigma_data, sigma_max, null_class: what a scheduler config does not say
DEFAULT_SIGMA_DATA = 0.5  # EDM's value for images in [-1, 1]


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the VE noise level of a VP timestep (EDM Table 1)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def sigma_to_t(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Continuous timestep for sigma: linear interpolation in log sigma over the table, clamped to its ends."""
    log_sigmas = sigmas.log()
    log_sigma = sigma.clamp(sigmas[0], sigmas[-1]).log()
    idx = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(sigmas) - 1)
    lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return (idx - 1).to(sigma.dtype) + w


def t_to_sigma(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of sigma_to_t: log-linear interpolation of the sigma table at continuous t."""
    lo = t.floor().long().clamp(0, len(sigmas) - 2)
    w = t - lo
    return ((1 - w) * sigmas[lo].log() + w * sigmas[lo + 1].log()).exp()


def x0_from_output(output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0 from a VP network output; x = x0 + sigma eps is the EDM input, sigma broadcast to x's rank."""
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        # v = alpha eps - s x0 with alpha = 1/sqrt(1+sigma^2), s = sigma alpha (Salimans & Ho 2022).
        alpha = (1 + sigma**2).rsqrt()
        return alpha * (alpha * x) - sigma * alpha * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type '{prediction_type}'; allowed: {', '.join(PREDICTION_TYPES)}")


class DiffusersUNetParts:
    """What every adapter of a diffusers UNet (`self.unet`, `self.prediction_type`) shares: the data shape, the modules
    DMD2's GAN head and a step-aware fake score read, and the loss weighting that is the network's own MSE."""

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    @property
    def bottleneck(self) -> nn.Module | None:
        """The module whose output is the UNet's bottleneck features (the mid block; DMD2's GAN head reads it)."""
        return self.unet.mid_block

    @property
    def time_embedding(self) -> nn.Module:
        """The module whose output is the noise-level embedding (B, C) every block reads (a step-aware fake score adds
        its step there)."""
        return self.unet.time_embedding

    @property
    def loss_weighting(self) -> str:
        """The denoising loss weighting that is this UNet's own MSE (teachers.base.denoising_loss_weight)."""
        return self.prediction_type


class UNetDenoiser(DiffusersUNetParts, nn.Module):
    """D(x, sigma, class_labels) for a diffusers UNet2DModel trained on a DDPM-family schedule.

    x: float32 NCHW in data units (images in [-1, 1]) plus sigma-scaled noise; sigma: scalar or (B,);
    cond: (B,) long class labels for class-conditional UNets (`num_class_embeds`), else None.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, sigma_data: float = DEFAULT_SIGMA_DATA,
                 sigma_max: float | None = None, null_class: int | None = None):
        super().__init__()
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"scheduler prediction_type '{prediction_type}'; allowed: {', '.join(PREDICTION_TYPES)}")
        self.unet, self.scheduler = unet, scheduler
        self.prediction_type = prediction_type
        table = sigmas_from_alphas_cumprod(scheduler.alphas_cumprod.double()).float()
        if not torch.isfinite(table).all():
            raise ConfigError(
                "the scheduler's last alpha_bar is 0 (a zero-terminal-SNR schedule, e.g. rescale_betas_zero_snr), so its "
                "sigma_max is infinite: an EDM denoiser cannot take pure noise at sigma = inf; use a schedule with "
                "alpha_bar > 0 at the last timestep"
            )
        self.register_buffer("sigmas", table, persistent=False)
        self.sigma_min = float(table[0])
        self.sigma_max = float(sigma_max if sigma_max is not None else table[-1])
        self.sigma_data = float(sigma_data)
        n = unet.config.num_class_embeds
        if null_class is not None and null_class != (n or 0) - 1:
            raise ConfigError(f"null_class={null_class}, but the UNet's null class must be its last class embedding, "
                              f"{(n or 0) - 1} (num_class_embeds={n})")
        self.null_class = null_class

    @property
    def num_classes(self) -> int | None:
        """Class labels the UNet takes (the null class of label dropout excluded); None when unconditional."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - (self.null_class is not None)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        # Outside the table, the network runs at its nearest end, and so do the input scaling and the x0 conversion:
        # a sigma below the first entry is treated as that entry (a timestep clamped alone would mismatch the scaling).
        sigma = expand_sigma(sigma, x).clamp(self.sigmas[0], self.sigmas[-1])
        x_vp = x * (1 + sigma**2).rsqrt()  # VP models see x / sqrt(1 + sigma^2)
        t = sigma_to_t(sigma.reshape(-1).float(), self.sigmas)
        output = self.unet(x_vp.to(self.unet.dtype), t, class_labels=cond).sample.to(x.dtype)
        return x0_from_output(output, x, sigma, self.prediction_type)

    def extra_config(self) -> dict:
        return {"sigma_data": self.sigma_data, "sigma_max": self.sigma_max, "null_class": self.null_class}

    def save_pretrained(self, path, safe_serialization: bool = True, scheduler=None) -> None:
        """A DDPMPipeline folder (loadable with diffusers) plus distill.json; `scheduler` replaces the teacher's in it
        (an exported student's is set for its own steps: distill.export)."""
        pipeline = DDPMPipeline(unet=self.unet, scheduler=scheduler or self.scheduler)
        pipeline.save_pretrained(path, safe_serialization=safe_serialization)
        (Path(path) / EXTRA_FILE).write_text(json.dumps(self.extra_config(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path) -> UNetDenoiser:
        """From a pipeline folder or hub id with unet/ and scheduler/ subfolders (hub ids need network)."""
        unet = UNet2DModel.from_pretrained(path_or_id, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(path_or_id, subfolder="scheduler")
        extra_path = Path(path_or_id) / EXTRA_FILE
        extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
        return cls(unet, scheduler, **extra)
