"""One update of the fake score and one of the student; each returns a dict of scalars (0-d tensors, or floats)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from distill.guard import any_process
from distill.gan import batch_mean, discriminator_loss, frozen, generator_loss
from distill.losses import dmd_gradient, dmd_loss, regression_loss
from teachers.base import expand_sigma
from teachers.loss import weighted_denoising_error


def apply_update(accelerator: Accelerator, loss: torch.Tensor, model, optimizer, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
    """Backward, clip the global grad norm, step; returns (grad norm before clipping, a 0-d tensor; skipped).

    A non-finite loss or grad norm on any process skips the optimizer step everywhere. That decision is the one
    read from the device per update: the logged scalars stay tensors until they are written (see `scalars`)."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    max_norm = grad_clip if grad_clip else float("inf")
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm).detach()
    skipped = any_process(accelerator, ~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)))
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return grad_norm, skipped


def picked(mask: torch.Tensor | None, *tensors):
    """Each tensor's rows where mask is true (every row when mask is None); a None stays None (no labels)."""
    return tuple(t if mask is None or t is None else t[mask] for t in tensors)


def steps_for_real(step_gan: torch.Tensor, step: torch.Tensor, n: int) -> torch.Tensor:
    """Student steps to label n real images with, for a step-aware classifier: the classified student samples' steps,
    tiled (the same mix of steps, so at each step it compares real images with that step's samples); the batch's
    steps when it classifies no student sample."""
    source = step_gan if len(step_gan) else step
    return source.repeat(-(-n // len(source)))[:n]


def scalars(logs: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The step functions' logs as floats: each tensor is read from the device here, at logging time only."""
    return {name: float(value) for name, value in logs.items()}


@torch.no_grad()
def dmd_grad_at(x: torch.Tensor, real, fake_score, sigma: torch.Tensor, cond=None, step: torch.Tensor | None = None) -> torch.Tensor:
    """Noise x to sigma and read both scores there: the DMD gradient for x (DMD Algorithm 1). fake_score: a Critic
    (step: each sample's student step, which a step-aware one reads)."""
    x_t = x + sigma.reshape(-1, *([1] * (x.ndim - 1))) * torch.randn_like(x)
    x0_real, x0_fake = real(x_t, sigma, cond), fake_score(x_t, sigma, cond, step=step)
    return dmd_gradient(x, x0_real, x0_fake)


@dataclass(frozen=True)
class Networks:
    """What the steps run: the (prepared) student generator G, the (prepared) Critic (D_fake and, with the GAN, its
    head), D_real, and the Critic unwrapped for the student's GAN loss (no DDP hooks)."""

    accelerator: Accelerator
    generator: torch.nn.Module
    fake_score: torch.nn.Module
    real: object = None
    critic: torch.nn.Module | None = None


@dataclass(frozen=True)
class Batch:
    """One update's draws: noise z (B, *shape), conds (B, ...) or None, each sample's student step (k-step students)
    or None, the GAN's sample mask (loss.gan_last_step_only) or None, and the GAN's noise levels."""

    z: torch.Tensor
    cond: torch.Tensor | None = None
    step: torch.Tensor | None = None
    gan_mask: torch.Tensor | None = None
    gan_sigma: torch.Tensor | None = None


@dataclass(frozen=True)
class FakeLoss:
    """The fake score's loss settings: its denoising loss (weighting = loss.fake_score_weighting, resolved) and the
    GAN classifier's weight (loss.gan_discriminator_weight)."""

    sigma_data: float = 1.0
    fake_weight: float = 1.0
    gan_weight: float = 0.0
    weighting: str = "edm"
    grad_clip: float | None = None


@dataclass(frozen=True)
class StudentLoss:
    """The student's loss settings: DMD, regression on teacher pairs, and the GAN generator's weight."""

    dmd_weight: float = 1.0
    regression_weight: float = 0.0
    regression_distance: str = "l2"
    pseudo_huber_c: float = 0.03
    gan_weight: float = 0.0
    grad_clip: float | None = None


def fake_step(
    nets: Networks,
    optimizer,
    batch: Batch,
    sigma: torch.Tensor,
    loss: FakeLoss,
    real_batch: tuple[torch.Tensor, ...] | None = None,
    x: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | float]:
    """Train D_fake (a Critic) to denoise student samples (of the same conds, when conditional), weighted by
    loss.weighting: x when given (the last
    student update's samples of z, as DMD2's guidance turn reuses its generator turn's), else G(z, cond) drawn now
    (a k-step student's at `step`, per sample).

    With DMD2's GAN (loss.gan_weight > 0, the Critic with a head): the same forward also classifies student samples
    and real images (x_real[, conds]), noised to batch.gan_sigma (2B: student then real; their forward stops at the
    bottleneck); the classifier loss trains the head and the fake score's backbone. batch.gan_mask (B,) picks the
    student samples the classifier sees (loss.gan_last_step_only); None: all. A step-aware critic reads each sample's
    step, and the real images' (steps_for_real)."""
    generator, fake_score, z, cond, step = nets.generator, nets.fake_score, batch.z, batch.cond, batch.step
    gan_weight, gan_sigma, gan_mask = loss.gan_weight, batch.gan_sigma, batch.gan_mask
    if x is None:
        with torch.no_grad():
            x = generator(z, cond, step)
    x_t = x + expand_sigma(sigma, x) * torch.randn_like(x)
    logs = {}
    if gan_weight > 0:
        x_real, *cond_real = real_batch
        x_gan, cond_gan, step_gan = picked(gan_mask, x, cond, step)
        pair, m = torch.cat([x_gan, x_real]), len(x_gan)
        cond_pair = torch.cat([cond_gan, *cond_real]) if cond is not None else None
        step_pair = None if step is None else torch.cat([step_gan, steps_for_real(step_gan, step, len(x_real))])
        # One (DDP) forward for denoising and classifying: DDP allows one forward per backward.
        gan_sigma = gan_sigma[: len(pair)]
        pair_t = pair + expand_sigma(gan_sigma, pair) * torch.randn_like(pair)
        x0, logits = fake_score(x_t, sigma, cond, step=step, classify=(pair_t, gan_sigma, cond_pair, step_pair))
        logits_fake, logits_real = logits[:m], logits[m:]
        loss_gan = discriminator_loss(logits_real, logits_fake)
        logs["loss/gan_discriminator"] = loss_gan.detach()
        logs["gan/real_accuracy"] = (logits_real > 0).float().mean().detach()
        logs["gan/fake_accuracy"] = batch_mean((logits_fake < 0).float()).detach()
    else:
        x0, loss_gan = fake_score(x_t, sigma, cond, step=step), 0.0
    denoising = weighted_denoising_error(x0, x, sigma, loss.sigma_data, loss.weighting).mean()
    total = loss.fake_weight * denoising + gan_weight * loss_gan
    grad_norm, skipped = apply_update(nets.accelerator, total, fake_score, optimizer, loss.grad_clip)
    return logs | {"loss/fake_score": denoising.detach(), "grad_norm/fake_score": grad_norm, "skipped/fake_score": float(skipped)}


def student_step(
    nets: Networks,
    optimizer,
    batch: Batch,
    sample_sigma: Callable[..., torch.Tensor],
    pairs: tuple[torch.Tensor, ...] | None,
    loss: StudentLoss,
) -> tuple[dict[str, torch.Tensor | float], torch.Tensor]:
    """DMD loss on G(z, cond) plus regression on teacher ODE pairs (z_ref, y_ref[, cond]), weighted as configured;
    with DMD2's GAN, plus the generator loss of the (frozen, unwrapped) critic on G(z) noised to batch.gan_sigma (on
    the samples batch.gan_mask picks, when given).

    A k-step student trains each sample of z at its `step` (None: drawn by the generator), and sample_sigma(n, step)
    then draws the DMD noise for those steps; the regression pairs start from pure noise, so they train step 0.

    Returns the logs and G(z, cond) as made before the update, detached (empty with neither DMD nor GAN): a fake-score
    update may train on them (train.reuse_student_samples)."""
    # The critic is frozen for the whole step, its backward included: under gradient checkpointing its forward is
    # recomputed in the backward, and must save the same tensors it saved with frozen weights.
    with frozen(nets.critic) if loss.gan_weight > 0 else contextlib.nullcontext():
        return _student_update(nets, optimizer, batch, sample_sigma, pairs, loss)


def _student_update(nets: Networks, optimizer, batch: Batch, sample_sigma, pairs, loss: StudentLoss):
    """student_step's losses and update (the critic, when there is one, already frozen)."""
    generator, real, fake_score, critic = nets.generator, nets.real, nets.fake_score, nets.critic
    z, cond, step, gan_sigma, gan_mask = batch.z, batch.cond, batch.step, batch.gan_sigma, batch.gan_mask
    dmd_weight, regression_weight, gan_weight = loss.dmd_weight, loss.regression_weight, loss.gan_weight
    # One generator call for both batches: DDP allows one forward per backward.
    z_ref, y_ref, *cond_ref = pairs if regression_weight > 0 else (z[:0], None) + (() if cond is None else (cond[:0],))
    if dmd_weight == 0 and gan_weight == 0:  # regression only: no student batch to make (the GAN alone still needs one)
        z, cond, step = z[:0], None if cond is None else cond[:0], None if step is None else step[:0]
    cond_all = torch.cat([cond, *cond_ref]) if cond is not None else None
    step_all = None if step is None else torch.cat([step, step.new_zeros(len(z_ref))])
    x_all = generator(torch.cat([z, z_ref]), cond_all, step_all)
    x, x_ref = x_all[: len(z)], x_all[len(z) :]
    logs, total = {}, torch.zeros((), device=z.device)
    if dmd_weight > 0:
        sigma = sample_sigma(len(x)) if step is None else sample_sigma(len(x), step)
        grad = dmd_grad_at(x.detach(), real, fake_score, sigma, cond, step)
        loss_dmd = dmd_loss(x, grad).mean()
        total = total + dmd_weight * loss_dmd
        logs["loss/dmd"] = loss_dmd.detach()
    if gan_weight > 0:
        x_gan, sigma_gan, cond_gan, step_gan = picked(gan_mask, x, gan_sigma, cond, step)
        logits = x_gan.new_zeros(0)
        if len(x_gan):  # gan_mask may pick none (no last-step sample drawn); diffusers' attention refuses an empty batch
            with nets.accelerator.autocast():  # the unwrapped critic: autocast as its prepared twin has
                logits = critic.logits(x_gan + expand_sigma(sigma_gan, x_gan) * torch.randn_like(x_gan), sigma_gan, cond_gan, step_gan)
        loss_gan = batch_mean(generator_loss(logits))
        total = total + gan_weight * loss_gan
        logs["loss/gan_generator"] = loss_gan.detach()
    if regression_weight > 0:
        loss_reg = regression_loss(x_ref, y_ref, loss.regression_distance, loss.pseudo_huber_c).mean()
        total = total + regression_weight * loss_reg
        logs["loss/regression"] = loss_reg.detach()
    logs["grad_norm/student"], skipped = apply_update(nets.accelerator, total, generator, optimizer, loss.grad_clip)
    logs["skipped/student"] = float(skipped)
    return logs, x.detach()
