"""The one convention for every model: the EDM denoiser (Karras et al. 2022)."""
from __future__ import annotations

import math
import torch

from teachers.checks import LOSS_WEIGHTINGS
from teachers.errors import ConfigError


class Teacher:
    """The teacher protocol: what every model family offers, so nothing outside `teachers/` asks what it holds.

    Required of a family: D(x, sigma, cond) -> x0 estimate (x float32 (B, *shape), sigma scalar or (B,)), and the
    attributes `sigma_min`, `sigma_max`, `sigma_data` and `shape`. Everything else has a default here that a family
    overrides where it differs: its conditions (class labels, text), its VAE (latent families), its trainable
    parts (the diffusers network LoRA and gradient checkpointing act on, the GAN head's feature layer, the time
    embedding a step-aware fake score adds to), and its export (the scheduler for k steps, the card's snippet).
    """

    family: str = "unknown"  # the registry's name (teachers.families)
    num_classes: int | None = None  # class labels taken (the null class excluded); None: not class-conditional
    null_class: int | None = None  # the label of classifier-free guidance's unconditional branch
    text_conditional: bool = False  # conds are text embeddings (encode_condition(prompts))
    latent: bool = False  # works on VAE latents: decode/encode/preview go through the VAE
    loss_weighting: str = "edm"  # the denoising weighting that is the network's own MSE (denoising_loss_weight)

    @property
    def unguided(self) -> Teacher:
        """The teacher itself (a guided real score's: the teacher it guides): its conditions and its VAE."""
        return self

    def student_input(self, noise: torch.Tensor, sigma) -> torch.Tensor:
        """A student's first input from z ~ N(0, I) at its first sigma: sigma z (DMD's G(z) = D(sigma_max z))."""
        return noise * torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)

    def sampling_sigmas(self, num_steps: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The sigmas of the teacher's full sampler over num_steps, then a final 0: EDM's Karras schedule here; a
        family with a stock schedule of its own (flow matching's shifted t's) gives that. shape: the samples' (a
        resolution-dependent shift reads it; None: the teacher's)."""
        from eval.samplers import karras_sigmas

        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max)

    def noise_ramp(self, u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
        """Sigma at position u in [0, 1] of the range DMD's noise levels are drawn on (u = 0: sigma_max): the Karras
        ramp here (DMD's t in [0.02, 0.98]); a flow family's is linear in its t."""
        from eval.samplers import karras_sigma_at

        return karras_sigma_at(u, sigma_min, sigma_max, rho)

    def encode_condition(self, prompts: list[str]):
        """The conds of a prompt set (text-to-image families)."""
        raise ConfigError(f"{type(self).__name__} is not text-to-image; it takes no prompts")

    def check_guidance(self, scale: float) -> None:
        """Refuse classifier-free guidance at `scale` where the family takes guidance otherwise (a guidance-distilled
        Flux's embedding); nothing here."""

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional branch of classifier-free guidance for every row of cond: the null class here."""
        if self.null_class is None:
            raise ConfigError(f"classifier-free guidance needs a class-conditional teacher trained with a null class, or a "
                              f"text-to-image teacher; this {self.family} teacher has none (use loss.guidance_scale=1)")
        return torch.full_like(cond, self.null_class)

    @property
    def makes_images(self) -> bool:
        """Its samples are images (C, H, W): an exported student gets a sample grid and a model card."""
        return len(self.shape) == 3

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images NCHW in [-1, 1] from samples (pixels: as they are)."""
        return x

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples in the denoiser's space from images in [-1, 1] (pixels: as they are)."""
        return images

    def decoder_module(self):
        """The frozen module decode() runs (a latent family's VAE; None for pixels): decoded samples are keyed by it."""
        return None

    def preview(self, x: torch.Tensor) -> torch.Tensor:
        """Images for progress sheets (a latent family may decode with a cheaper VAE)."""
        return self.decode(x)

    @property
    def bottleneck(self):
        """The module whose output is the bottleneck features DMD2's GAN head reads; None: no GAN head possible."""
        return None

    @property
    def time_embedding(self):
        """The module whose output is the noise-level embedding a step-aware fake score adds to; None: none."""
        return None

    def lora_network(self):
        """The diffusers network LoRA layers go into (peft's add_adapter)."""
        raise ConfigError(f"lora.rank is set, but {type(self).__name__} has no diffusers network that takes LoRA layers "
                          "(UNet2DConditionModel does: Stable Diffusion teachers); set lora.rank=null")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the network's activations in backward (train.gradient_checkpointing)."""
        raise ConfigError(f"train.gradient_checkpointing=true needs a diffusers UNet or transformer; {type(self).__name__} "
                          "has none (set it to false)")

    def export_scheduler(self, sigmas: list[float]):
        """(scheduler, timesteps, exact): the diffusers scheduler a stock pipeline runs the student's steps with, the
        steps as the network's timesteps, and whether the scheduler hits them exactly. (None, [], False): no pipeline."""
        return None, [], False

    def usage_snippet(self, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str | None:
        """The model card's code that makes the student's images with stock diffusers; None: the toolkit's sampler."""
        return None

    def card_facts(self) -> tuple[str, str]:
        """(the card's pipeline_tag, how a stock pipeline runs the exported student when its scheduler is exact)."""
        return "unconditional-image-generation", "its sampler is the toolkit's (no stock pipeline runs this network)"

    def save_lora_weights(self, folder, lora) -> bool:
        """Write the LoRA weights where the family's stock pipeline loads them; False when it has no LoRA loader."""
        return False


class ConfigSigmas:
    """sigma_min, sigma_max and sigma_data read from a diffusers ConfigMixin's config (the model folders' families)."""

    @property
    def sigma_min(self) -> float:
        return self.config.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.config.sigma_max

    @property
    def sigma_data(self) -> float:
        return self.config.sigma_data


def expand_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) sigma to x's rank: (B, 1, ..., 1)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


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




def denoising_loss_weight(sigma: torch.Tensor, sigma_data: float, weighting: str) -> torch.Tensor:
    """The weight on ||x0_pred - x0||^2 that makes the loss the MSE of what a network predicts: EDM's lambda(sigma)
    for EDM-preconditioned nets; 1/sigma^2 for eps (x0 error = sigma * eps error; EDM Table 1's VP lambda, DMD2's
    eps-MSE); (1 + sigma^2)/sigma^2 for VP v-prediction (x0 error = sigma/sqrt(1+sigma^2) * v error); 1 for x0;
    ((1 + sigma)/sigma)^2 = 1/t^2 for rectified flow's v (x0 error = t * v error)."""
    if weighting == "edm":
        return edm_loss_weight(sigma, sigma_data)
    if weighting == "epsilon":
        return 1 / sigma**2
    if weighting == "v_prediction":
        return (1 + sigma**2) / sigma**2
    if weighting == "sample":
        return torch.ones_like(sigma)
    if weighting == "flow":  # rectified flow's v-MSE (teachers/flow.py): x0 error = t * v error, t = sigma / (1 + sigma)
        return (1 + sigma) ** 2 / sigma**2
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
