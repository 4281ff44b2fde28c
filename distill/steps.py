"""One distillation step: its random draws, N fake-score updates and one student update, each summing its loss terms
(distill.terms); each update returns a dict of scalars (0-d tensors, or floats)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from distill.gan import batch_mean, frozen
from distill.guard import NonFiniteGuard, any_process
from distill.noise import sample_dmd_sigma
from distill.sharding import full
from distill.state import Counters
from eval.samplers import karras_sigma_at
from distill.terms import Needs, Term, combined_needs
from teachers.base import expand_sigma
from teachers.conditions import Conditions


def apply_update(accelerator: Accelerator, loss: torch.Tensor, model, optimizer, grad_clip: float | None) -> tuple[torch.Tensor, bool]:
    """Backward, clip the global grad norm, step; returns (grad norm before clipping, a 0-d tensor; skipped).

    A non-finite loss or grad norm on any process skips the optimizer step everywhere. That decision is the one
    read from the device per update: the logged scalars stay tensors until they are written (see `scalars`)."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    max_norm = grad_clip if grad_clip else float("inf")
    grad_norm = full(accelerator.clip_grad_norm_(model.parameters(), max_norm)).detach()  # whole: a sharded (FSDP) norm too
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


def weighted_sum(terms: dict[str, Term], inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum of weight x batch mean of each term's value (a per-batch value as it is); logs loss/<name>."""
    total, logs = 0.0, {}
    for name, term in terms.items():
        value = term(inputs)
        value = value if value.ndim == 0 else batch_mean(value)  # an empty batch (no last-step sample) adds 0
        total = total + term.weight * value
        logs[f"loss/{name}"] = value.detach()
    return total, logs


def noised(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x + sigma eps, sigma per sample."""
    return x + expand_sigma(sigma, x) * torch.randn_like(x)


@dataclass(frozen=True)
class Networks:
    """What the steps run: the (prepared) student generator G, the (prepared) Critic (D_fake and, with the GAN, its
    head), D_real, and the Critic unwrapped (no DDP hooks) for reads inside the student's update."""

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
class StepSampling:
    """How a k-step student's training samples and noise levels are drawn; options of this toolkit, not DMD2's (which
    draws each sample's step uniformly and uses the whole noise range for every step):

    last_step_only: every sample is a last-step sample (steps 0..k-2 by backward simulation), so the fake score and
    the losses see only what the student delivers; gan_last_step_only: the GAN classifies (and its generator loss
    trains) only the last step's samples; sigma_up_to_student_step: a step-i sample is noised at sigma <= s_i only."""

    sigmas: tuple[float, ...]
    last_step_only: bool = False
    gan_last_step_only: bool = False
    sigma_up_to_student_step: bool = False

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    def steps(self, student, n: int, device) -> torch.Tensor | None:
        """Each sample's training step: the student's uniform draw, or always the last one."""
        if self.last_step_only and self.num_steps > 1:
            return torch.full((n,), self.num_steps - 1, device=device)
        return student.draw_steps(n, device)

    def gan_mask(self, step: torch.Tensor | None) -> torch.Tensor | None:
        """The samples the GAN sees: the last step's with gan_last_step_only; None: all."""
        return None if step is None or not self.gan_last_step_only else step == self.num_steps - 1

    def sigma_max(self, step: torch.Tensor | None, sigma_max: float, device):
        """A range's upper end per sample: at most its step's input sigma with sigma_up_to_student_step."""
        if step is None or not self.sigma_up_to_student_step:
            return sigma_max
        return torch.tensor(self.sigmas, device=device)[step].clamp(max=sigma_max)


@dataclass
class Draws:
    """The step's random draws: noise, conditions, student steps, and noise levels from the configured ranges
    (loss.sigma for the student's terms, loss.fake_sigma for the fake score's, loss.gan_sigma for the GAN's)."""

    device: torch.device
    shape: tuple[int, ...]
    student: torch.nn.Module  # the unwrapped StudentGenerator: its step draws
    sampling: StepSampling
    ranges: dict[str, dict]  # sigma, fake_sigma, gan_sigma: min, max, rho, t_min, t_max
    conditions: Conditions | None = None  # the rows conds are drawn from; None: unconditional
    ramp: Callable = karras_sigma_at  # the teacher's noise_ramp: where a range's t lands in sigma

    def z(self, n: int) -> torch.Tensor:
        return torch.randn(n, *self.shape, device=self.device)

    def cond(self, n: int) -> torch.Tensor | None:
        """Uniform rows of the condition table (class labels, or prompt embeddings); None for unconditional teachers."""
        return None if self.conditions is None else self.conditions.draw(n, device=self.device)[0]

    def steps(self, n: int) -> torch.Tensor | None:
        return self.sampling.steps(self.student, n, self.device)

    def sigma(self, n: int, step: torch.Tensor | None = None, key: str = "sigma") -> torch.Tensor:
        """n noise levels of the range `key`, each at most its sample's step sigma where the sampling says so."""
        sigma = dict(self.ranges[key])
        sigma["max"] = self.sampling.sigma_max(step, sigma["max"], self.device)
        return sample_dmd_sigma(n, **sigma, device=self.device, ramp=self.ramp)

    def batch(self, n: int, gan_n: int, cond: torch.Tensor | None = None, step: torch.Tensor | None = None) -> Batch:
        """A batch of n noises with the given (or fresh) conds and steps, and gan_n GAN noise levels."""
        return Batch(self.z(n), cond, step, self.sampling.gan_mask(step), self.sigma(gan_n, key="gan_sigma"))


@dataclass(frozen=True)
class Settings:
    """The step's sizes and options (the train section's): batch sizes, fake updates per student update, reuse of the
    student's samples, clipping, and the fake score's data scale and `auto` weighting (the teacher's own MSE)."""

    batch_size: int
    regression_batch_size: int
    num_fake_steps_per_student_step: int = 1
    reuse_student_samples: bool = False
    grad_clip: float | None = None
    sigma_data: float = 1.0
    auto_weighting: str = "edm"


@dataclass
class StudentInputs:
    """What a student term reads: G's samples x (with gradients) and their conds and steps, G(z_ref) and y_ref of the
    regression pairs, and the networks, read at noise drawn here."""

    nets: Networks
    draws: Draws
    batch: Batch
    x: torch.Tensor
    x_ref: torch.Tensor | None = None
    y_ref: torch.Tensor | None = None

    def noised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x noised to sigma of loss.sigma (per sample, at most its step's sigma where configured), and that sigma."""
        sigma = self.draws.sigma(len(x), self.batch.step)
        return noised(x, sigma), sigma

    def scores(self, x_t: torch.Tensor, sigma: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_real, x0_fake) at x_t: without gradients (DMD), or with gradients through x_t into G (SiD; the scores'
        weights are frozen for the update, and the unwrapped critic runs under the accelerator's autocast)."""
        cond, step = self.batch.cond, self.batch.step
        if not grad:
            with torch.no_grad():
                return self.nets.real(x_t, sigma, cond), self.nets.fake_score(x_t, sigma, cond, step=step)
        with self.nets.accelerator.autocast():
            return self.nets.real(x_t, sigma, cond), self.nets.critic(x_t, sigma, cond, step=step)

    def gan_logits(self) -> torch.Tensor:
        """The frozen critic's logits of the samples the GAN sees, noised to the batch's GAN sigmas."""
        b = self.batch
        x_gan, sigma_gan, cond_gan, step_gan = picked(b.gan_mask, self.x, b.gan_sigma, b.cond, b.step)
        if not len(x_gan):  # gan_mask may pick none (no last-step sample drawn); diffusers' attention refuses an empty batch
            return x_gan.new_zeros(0)
        with self.nets.accelerator.autocast():  # the unwrapped critic: autocast as its prepared twin has
            return self.nets.critic.logits(noised(x_gan, sigma_gan), sigma_gan, cond_gan, step_gan)


@dataclass
class FakeInputs:
    """What a fake-score term reads: student samples x, D_fake's x0 at x noised to sigma, and the classifier's logits
    of real and student images (None without the GAN)."""

    x: torch.Tensor
    x0: torch.Tensor
    sigma: torch.Tensor
    sigma_data: float
    auto_weighting: str
    logits_real: torch.Tensor | None = None
    logits_fake: torch.Tensor | None = None


def fake_step(nets: Networks, optimizer, batch: Batch, sigma: torch.Tensor, terms: dict[str, Term], settings: Settings,
              real_batch: tuple[torch.Tensor, ...] | None = None, x: torch.Tensor | None = None) -> dict[str, torch.Tensor | float]:
    """Train D_fake (a Critic) on its terms (loss.fake): denoising of student samples x noised to sigma, x given (the
    last student update's samples of z, as DMD2's guidance turn reuses its generator turn's) or G(z, cond) drawn now
    (a k-step student's at `step`, per sample).

    With a term that needs the critic (the GAN): the same forward also classifies student samples and real images
    (x_real[, conds]), noised to batch.gan_sigma (2B: student then real; their forward stops at the bottleneck);
    batch.gan_mask (B,) picks the student samples the classifier sees; None: all. A step-aware critic reads each
    sample's step, and the real images' (steps_for_real)."""
    generator, fake_score, z, cond, step = nets.generator, nets.fake_score, batch.z, batch.cond, batch.step
    if x is None:
        with torch.no_grad():
            x = generator(z, cond, step)
    x_t = noised(x, sigma)
    logs, inputs = {}, FakeInputs(x, None, sigma, settings.sigma_data, settings.auto_weighting)
    if combined_needs(terms).critic:
        x_real, *cond_real = real_batch
        x_gan, cond_gan, step_gan = picked(batch.gan_mask, x, cond, step)
        pair, m = torch.cat([x_gan, x_real]), len(x_gan)
        cond_pair = torch.cat([cond_gan, *cond_real]) if cond is not None else None
        step_pair = None if step is None else torch.cat([step_gan, steps_for_real(step_gan, step, len(x_real))])
        # One (DDP) forward for denoising and classifying: DDP allows one forward per backward.
        gan_sigma = batch.gan_sigma[: len(pair)]
        inputs.x0, logits = fake_score(x_t, sigma, cond, step=step, classify=(noised(pair, gan_sigma), gan_sigma, cond_pair, step_pair))
        inputs.logits_fake, inputs.logits_real = logits[:m], logits[m:]
        logs["gan/real_accuracy"] = (inputs.logits_real > 0).float().mean().detach()
        logs["gan/fake_accuracy"] = batch_mean((inputs.logits_fake < 0).float()).detach()
    else:
        inputs.x0 = fake_score(x_t, sigma, cond, step=step)
    total, term_logs = weighted_sum(terms, inputs)
    grad_norm, skipped = apply_update(nets.accelerator, total, fake_score, optimizer, settings.grad_clip)
    return logs | term_logs | {"grad_norm/fake_score": grad_norm, "skipped/fake_score": float(skipped)}


def student_step(nets: Networks, optimizer, batch: Batch, draws: Draws, pairs: tuple[torch.Tensor, ...] | None,
                 terms: dict[str, Term], grad_clip: float | None = None) -> tuple[dict[str, torch.Tensor | float], torch.Tensor]:
    """Train G on its terms (loss.student): those that need samples read G(z, cond) (a k-step student's at each
    sample's step, None: drawn by G), the regression pairs' G(z_ref) (step 0: they start from pure noise).

    Returns the logs and G(z, cond) as made before the update, detached (empty when no term needs samples): a
    fake-score update may train on them (train.reuse_student_samples)."""
    needs = combined_needs(terms)
    # The critic is frozen for the whole step, its backward included: under gradient checkpointing its forward is
    # recomputed in the backward, and must save the same tensors it saved with frozen weights.
    with frozen(nets.critic) if needs.critic or needs.through_scores else contextlib.nullcontext():
        return _student_update(nets, optimizer, batch, draws, pairs, terms, needs, grad_clip)


def _student_update(nets: Networks, optimizer, batch: Batch, draws, pairs, terms, needs: Needs, grad_clip):
    """student_step's update (the critic, when read, already frozen)."""
    z, cond, step = batch.z, batch.cond, batch.step
    z_ref, y_ref, *cond_ref = pairs if needs.pairs else (z[:0], None) + (() if cond is None else (cond[:0],))
    if not needs.samples:  # regression only: no student batch to make
        z, cond, step = z[:0], None if cond is None else cond[:0], None if step is None else step[:0]
        batch = Batch(z, cond, step)
    # One generator call for both batches: DDP allows one forward per backward.
    cond_all = torch.cat([cond, *cond_ref]) if cond is not None else None
    step_all = None if step is None else torch.cat([step, step.new_zeros(len(z_ref))])
    x_all = nets.generator(torch.cat([z, z_ref]), cond_all, step_all)
    x, x_ref = x_all[: len(z)], x_all[len(z) :]
    total, logs = weighted_sum(terms, StudentInputs(nets, draws, batch, x, x_ref, y_ref))
    logs["grad_norm/student"], skipped = apply_update(nets.accelerator, total, nets.generator, optimizer, grad_clip)
    logs["skipped/student"] = float(skipped)
    return logs, x.detach()


def random_batch(tensors, batch_size: int, device):
    """A random batch of stored tensors (teacher ODE pairs (z_ref, y_ref[, label]), or real images[, labels])."""
    if tensors is None:
        return None
    idx = torch.randint(len(tensors[0]), (batch_size,), device=device)
    return tuple(t[idx] for t in tensors)


def with_conds(batch: tuple | None, conditions: Conditions | None) -> tuple | None:
    """A stored batch whose last entry is condition rows (pairs (z, y, rows), real images (x, rows)) with those rows
    looked up in the condition table: only a batch's conds reach the device."""
    if batch is None or conditions is None:
        return batch
    return (*batch[:-1], conditions.rows(batch[-1]))


@dataclass(frozen=True)
class Stored:
    """Stored batches a step draws from: teacher ODE pairs (z, y[, condition rows]) and real images (x[, rows]) for
    the GAN, with the condition tables those rows index (the run's; the real images' own captions)."""

    pairs: tuple[torch.Tensor, ...] | None = None
    pair_conditions: Conditions | None = None
    real: tuple[torch.Tensor, ...] | None = None
    real_conditions: Conditions | None = None

    def pair_batch(self, n: int, device):
        return with_conds(random_batch(self.pairs, n, device), self.pair_conditions)

    def real_batch(self, n: int, device):
        return with_conds(random_batch(self.real, n, device), self.real_conditions)


@dataclass
class Distiller:
    """What a step runs: the networks and their optimizers, the terms of each side, the draws, the stored batches and
    the settings; `recent` holds the last student update's samples, conds and steps (train.reuse_student_samples)."""

    nets: Networks
    student_optimizer: torch.optim.Optimizer
    fake_optimizer: torch.optim.Optimizer
    student_terms: dict[str, Term]
    fake_terms: dict[str, Term]
    draws: Draws
    stored: Stored
    settings: Settings
    recent: tuple | None = None

    @property
    def trains_fake_score(self) -> bool:
        """The fake score updates when a student term reads it or the critic (not only for DMD, or with the GAN)."""
        needs = combined_needs(self.student_terms)
        return needs.fake or needs.critic


def distill_step(d: Distiller, guard: NonFiniteGuard, counters: Counters) -> dict[str, torch.Tensor | float]:
    """N fake-score updates (DMD2's two time-scale rule), then one student update; counts and guards them.

    With train.reuse_student_samples the first fake update trains on the last student update's samples, as DMD2's
    guidance turn does: one generator forward fewer per student update."""
    logs, s, draws, step, device = {}, d.settings, d.draws, counters.step + 1, d.draws.device
    n = s.batch_size
    for i in range(s.num_fake_steps_per_student_step if d.trains_fake_score else 0):
        # Update the fake score (the random stream's order is the one the checkpoints' resumes replay).
        reuse = i == 0 and d.recent is not None and len(d.recent[0]) == n
        z = draws.z(n)
        x, cond, steps = d.recent if reuse else (None, None, draws.steps(n))
        sigma = draws.sigma(n, steps, "fake_sigma")
        cond = cond if reuse else draws.cond(n)
        real_batch = d.stored.real_batch(n, device)
        batch = Batch(z, cond, steps, draws.sampling.gan_mask(steps), draws.sigma(2 * n, key="gan_sigma"))
        logs |= fake_step(d.nets, d.fake_optimizer, batch, sigma, d.fake_terms, s, real_batch, x)
        guard.record("fake_score", logs["skipped/fake_score"] > 0, step)
        counters.fake_updates += 1
    # Update the student.
    pairs = d.stored.pair_batch(s.regression_batch_size, device)
    z, cond, steps = draws.z(n), draws.cond(n), draws.steps(n)
    batch = Batch(z, cond, steps, draws.sampling.gan_mask(steps), draws.sigma(n, key="gan_sigma"))
    student_logs, x = student_step(d.nets, d.student_optimizer, batch, draws, pairs, d.student_terms, s.grad_clip)
    logs |= student_logs
    d.recent = (x, cond, steps) if s.reuse_student_samples else None
    guard.record("student", logs["skipped/student"] > 0, step)
    counters.step, counters.student_updates, counters.skipped = step, counters.student_updates + 1, guard.skipped
    return logs
