"""The VP-discrete parameterisation (DDPM-family tables: eps, v, x0) as one EDM denoiser, once for every family.

As k-diffusion's `DiscreteSchedule` / `DiscreteEpsDDPMDenoiser`: the base owns the alpha_bar -> sigma table, the
sigma <-> timestep lookup, the input scaling x / sqrt(1 + sigma^2), the eps / v / x0 -> x0 conversion, the loss
weighting that is the network's own MSE, and the scheduler a stock pipeline runs a student's steps with. A family
(UNet, Stable Diffusion, DiT) says only how its network is called (`network_output`) and what it saves.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from teachers.base import Teacher, expand_sigma
from teachers.errors import ConfigError
from teachers.folders import PREDICTION_TYPES

EXTRA_FILE = "distill.json"  # sigma_data, sigma_max, null_class: what a scheduler config does not say
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                 "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")


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


def training_schedule(scheduler_config: dict):
    """A DDPMScheduler with the pipeline scheduler's beta schedule: its alphas_cumprod is the training schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: scheduler_config[k] for k in SCHEDULE_KEYS if k in scheduler_config})


def sigma_table(scheduler_config: dict) -> torch.Tensor:
    """The EDM sigma of every training timestep (float32, increasing); a zero-terminal-SNR schedule is refused."""
    table = sigmas_from_alphas_cumprod(training_schedule(dict(scheduler_config)).alphas_cumprod.double()).float()
    if not torch.isfinite(table).all():
        raise ConfigError(
            "the scheduler's last alpha_bar is 0 (a zero-terminal-SNR schedule, e.g. rescale_betas_zero_snr), so its "
            "sigma_max is infinite: an EDM denoiser cannot take pure noise at sigma = inf; use a schedule with "
            "alpha_bar > 0 at the last timestep")
    return table


def sigma_range(scheduler_config: dict, extra: dict) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a VP teacher from its scheduler config and distill.json, without loading weights."""
    table = sigma_table(scheduler_config)
    return float(table[0]), float(extra.get("sigma_max") or table[-1])


def lcm_scheduler(scheduler_config: dict, k: int):
    """LCMScheduler with original_inference_steps = k: DMD2's trailing timesteps (999, 749, 499, 249 for k = 4 of
    1000; 999 for one step); it predicts x0 and re-noises it with fresh noise, as DMD2's k-step sampler does. Its
    consistency boundary scaling is c_skip = 0.25 / ((10 t)^2 + 0.25) < 1e-7 at t >= 249, so it returns x0 itself."""
    from diffusers import LCMScheduler

    accepted = inspect.signature(LCMScheduler.__init__).parameters  # the teacher's DDPM-only keys would warn on every load
    config = {key: value for key, value in scheduler_config.items() if key in accepted}
    scheduler = LCMScheduler.from_config({**config, "original_inference_steps": k, "clip_sample": False, "thresholding": False})
    scheduler.set_timesteps(k)
    return scheduler


def read_extra(folder: Path) -> dict:
    """distill.json of a saved teacher or student (sigma_data, sigma_max, ...); {} when there is none."""
    path = Path(folder) / EXTRA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_pipeline_folder(model, path, safe_serialization: bool = True, scheduler=None) -> None:
    """A family's stock pipeline folder (`model.pipeline(scheduler)`) plus distill.json (`model.extra_config()`): what
    VP and flow families alike write."""
    model.pipeline(scheduler).save_pretrained(path, safe_serialization=safe_serialization)
    (Path(path) / EXTRA_FILE).write_text(json.dumps(model.extra_config(), indent=2) + "\n")


class VPDenoiser(Teacher, nn.Module):
    """D(x, sigma, cond) for a network trained on a DDPM-family schedule; subclasses call their network in
    `network_output(x_vp, t, cond)` and name it in `network`.

    x: float32 in the network's data units plus sigma-scaled noise; sigma: scalar or (B,).
    """

    def __init__(self, scheduler, sigma_data: float, sigma_max: float | None = None):
        nn.Module.__init__(self)
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type '{self.prediction_type}'; allowed: {', '.join(PREDICTION_TYPES)}")
        table = sigma_table(scheduler.config)
        self.register_buffer("sigmas", table, persistent=False)
        self.sigma_min = float(table[0])
        self.sigma_max = float(sigma_max if sigma_max is not None else table[-1])
        self.sigma_data = float(sigma_data)

    @property
    def network(self) -> nn.Module:
        """The diffusers network (UNet or transformer): what trains, takes LoRA layers and is checkpointed."""
        raise NotImplementedError

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The network's raw prediction (eps, v or x0) at VP input x_vp and continuous timestep t (B,)."""
        raise NotImplementedError

    @property
    def loss_weighting(self) -> str:
        return self.prediction_type

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        # Outside the table, the network runs at its nearest end, and so do the input scaling and the x0 conversion
        # (configs are refused at validation when their sigmas leave [sigma_min, sigma_max]; this guards rounding).
        sigma = expand_sigma(sigma, x).clamp(self.sigmas[0], self.sigmas[-1])
        x_vp = x * (1 + sigma**2).rsqrt()  # VP models see x / sqrt(1 + sigma^2)
        t = sigma_to_t(sigma.reshape(-1).float(), self.sigmas)
        output = self.network_output(x_vp, t, cond).to(x.dtype)
        return x0_from_output(output, x, sigma, self.prediction_type)

    def lora_network(self) -> nn.Module:
        from diffusers.loaders.peft import PeftAdapterMixin

        if not isinstance(self.network, PeftAdapterMixin):  # diffusers gives LoRA loading to some networks only
            return super().lora_network()
        return self.network

    def enable_gradient_checkpointing(self) -> None:
        if not self.network._supports_gradient_checkpointing:
            super().enable_gradient_checkpointing()
        self.network.enable_gradient_checkpointing()

    def timesteps(self, sigmas: list[float]) -> list[float]:
        """The network's continuous timesteps of the sigmas."""
        return sigma_to_t(torch.tensor(sigmas, dtype=torch.float32), self.sigmas).tolist()

    def export_scheduler(self, sigmas: list[float]):
        scheduler = lcm_scheduler(dict(self.scheduler.config), len(sigmas))
        timesteps = self.timesteps(sigmas)
        exact = all(abs(t - int(s)) < 1e-3 for t, s in zip(timesteps, scheduler.timesteps.tolist()))
        return scheduler, timesteps, exact

    def extra_config(self) -> dict:
        return {"sigma_data": self.sigma_data, "sigma_max": self.sigma_max}

    def pipeline(self, scheduler=None):
        """The family's stock diffusers pipeline of these components."""
        raise NotImplementedError

    def save_pretrained(self, path, safe_serialization: bool = True, scheduler=None) -> None:
        """The family's pipeline folder (stock diffusers loads it) plus distill.json; `scheduler` replaces the
        teacher's in it (an exported student's is set for its own steps)."""
        save_pipeline_folder(self, path, safe_serialization, scheduler)
