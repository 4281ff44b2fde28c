"""DMD2's GAN term (Yin et al. 2024, sec. 4.3): a classifier head on the fake score's bottleneck features.

Real images and student images are noised to a random sigma and classified by the head on D_fake's
bottleneck (diffusion-GAN). The discriminator loss trains the head and the fake score's backbone;
the generator loss flows through the frozen critic into the student's images.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.fake_score import StepEmbedding, module_output, probe_input
from teachers.errors import ConfigError
from teachers.guidance import guided_forward


def find_bottleneck(denoiser: nn.Module) -> nn.Module:
    """The module whose output is the denoiser's bottleneck features (`bottleneck` on the adapter)."""
    module = denoiser.bottleneck
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"the GAN terms (loss.student.gan_generator, loss.fake.gan_discriminator) need the fake score's bottleneck "
            f"features, but {type(denoiser).__name__} has none (supported: UNetDenoiser with a mid block, MLPDenoiser, "
            "the latent and DiT adapters); leave the GAN terms out (loss=dmd, loss=sid)"
        )
    return module


def group_count(channels: int) -> int:
    """GroupNorm groups: 32 where the channels allow it, fewer for small networks."""
    return math.gcd(32, channels)


def conv_head(channels: int) -> nn.Module:
    """Conv -> GroupNorm -> SiLU, a stride-2 conv, global average pool, one logit (after DMD2's cls_pred_branch)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(group_count(channels), channels), nn.SiLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GroupNorm(group_count(channels), channels), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1),
    )


def mlp_head(features: int) -> nn.Module:
    """Two layers on vector features, one logit."""
    return nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, 1))


def bottleneck_features(denoiser: nn.Module, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
    """The bottleneck features of x; the forward stops there (the decoder, about half of a UNet's work, is skipped;
    DMD2's classify mode stops at the bottleneck too). Gradients flow as usual."""
    features = module_output(denoiser, find_bottleneck(denoiser), x, sigma, cond)
    if features is None:
        raise ConfigError(f"{type(denoiser).__name__}.bottleneck produced no tensor features; leave the GAN terms out (loss=dmd, loss=sid)")
    return features.mean(1) if features.ndim == 3 else features  # a transformer's tokens (B, N, D): their mean, (B, D)


@torch.no_grad()
def build_head(denoiser: nn.Module, sigma: float = 1.0) -> nn.Module:
    """A head sized for the denoiser's bottleneck: conv for (B, C, H, W) features, MLP for (B, F)."""
    probe, cond = probe_input(denoiser)
    features = bottleneck_features(denoiser, probe, sigma, cond)
    if features.ndim == 4:
        return conv_head(features.shape[1]).to(probe.device)
    if features.ndim == 2:
        return mlp_head(features.shape[1]).to(probe.device)
    raise ConfigError(f"bottleneck features of shape {tuple(features.shape)}; the GAN head takes (B, C, H, W) or (B, F)")


class Critic(nn.Module):
    """D_fake and, with DMD2's GAN, its classifier head (and, with loss.step_aware_fake_score, its step embedding):
    one module, so one (DDP) forward gives both outputs."""

    def __init__(self, fake_score: nn.Module, head: nn.Module | None, steps: StepEmbedding | None = None,
                 guidance_scale: float = 1.0):
        super().__init__()
        self.fake_score, self.head, self.steps = fake_score, head, steps
        self.guidance_scale = float(guidance_scale)  # SiD-LSG: D_fake guided as the real score (1: unguided, DMD's)

    def forward(self, x: torch.Tensor, sigma, cond=None, step: torch.Tensor | None = None, classify: tuple | None = None):
        """x0 estimate of x (student samples made at `step`, which a step-aware D_fake reads), guided where
        loss.fake_guidance_scale says; with classify=(x_c, sigma_c[, cond_c[, step_c]]): (x0 estimate of x,
        real-vs-fake logits of x_c)."""
        x0 = self.at_step(step, self.denoise, x, sigma, cond)
        return x0 if classify is None else (x0, self.logits(*classify))

    def denoise(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if self.guidance_scale == 1:
            return self.fake_score(x, sigma, cond)
        return guided_forward(self.fake_score, self.guidance_scale, x, sigma, cond)

    def logits(self, x: torch.Tensor, sigma, cond=None, step: torch.Tensor | None = None) -> torch.Tensor:
        """Real-vs-fake logits (B,) of x noised to sigma (at `step`, when step-aware): the backbone runs up to its
        bottleneck only."""
        return self.head(self.at_step(step, bottleneck_features, self.fake_score, x, sigma, cond).float()).reshape(-1)

    def at_step(self, step: torch.Tensor | None, fn, *args):
        """fn(*args) with each sample's student step in D_fake's time embedding (loss.step_aware_fake_score)."""
        with self.steps.added(self.fake_score, step) if self.steps is not None else contextlib.nullcontext():
            return fn(*args)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the classifier: the mean of softplus(-D(real)) plus the mean of softplus(D(fake));
    the batches may differ in size, and an empty fake batch adds 0 (loss.gan_last_step_only may leave none)."""
    return F.softplus(-logits_real).mean() + batch_mean(F.softplus(logits_fake))


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over a batch, 0 for an empty one (not NaN)."""
    return values.sum() / max(len(values), 1)


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The student's GAN loss: softplus(-D(G(z))) per sample (DMD2 eq. 5, non-saturating)."""
    return F.softplus(-logits_fake)


@contextlib.contextmanager
def frozen(module: nn.Module):
    """No parameter gradients inside (the critic during the student's GAN loss); restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
