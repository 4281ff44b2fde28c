"""The student G: a trainable copy of the teacher denoiser, used on a fixed sigma list (one step by default)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from eval.samplers import multistep_student, one_step


def trainable_copy(network: nn.Module) -> nn.Module:
    """A deep copy of a teacher network in float32, in train mode with gradients on (student, fake score): a teacher
    loaded in half precision (teacher.dtype) trains fp32 copies, autocast by train.mixed_precision."""
    return copy.deepcopy(network).float().train().requires_grad_(True)


class StudentGenerator(nn.Module):
    """G(z, cond) on sigmas s_0 > ... > s_{k-1} (default: [sigma_max], the one-step student of DMD).

    One step: G(z) = D_student(s_0 z, s_0). k steps (DMD2 sec. 4.5): in training each sample picks a step i
    uniformly and its input x_{s_i} comes from the student's own earlier steps under no_grad (backward
    simulation), so only D_student(x_{s_i}, s_i) carries a gradient. `sample` runs all k steps.
    """

    def __init__(self, denoiser: nn.Module, sigmas: list[float] | None = None):
        super().__init__()
        self.denoiser = denoiser
        # plain floats, not buffers: DDP broadcasts buffers
        self.sigmas = [float(denoiser.sigma_max)] if sigmas is None else [float(s) for s in sigmas]

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)

    def forward(self, z: torch.Tensor, cond=None, step: torch.Tensor | None = None) -> torch.Tensor:
        """G(z, cond); a k-step student trains each sample at its `step` (None: drawn uniformly, as DMD2 does)."""
        if self.num_steps == 1:
            return one_step(self.denoiser, z, z.new_tensor([self.sigmas[0], 0.0]), cond)
        if step is None:
            step = self.draw_steps(z.shape[0], z.device)
        x_t, sigma = self.backward_simulation(z, step, cond)
        return self.denoiser(x_t, sigma, cond)

    def draw_steps(self, n: int, device=None) -> torch.Tensor | None:
        """Each of n samples' training step, uniform over the k steps (DMD2 sec. 4.5); None for a one-step student."""
        return torch.randint(self.num_steps, (n,), device=device) if self.num_steps > 1 else None

    @torch.no_grad()
    def backward_simulation(self, z: torch.Tensor, step: torch.Tensor, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's input at its step i: the student's own steps 0..i-1 from s_0 z, re-noised to s_i.

        Step j runs only on the samples whose step is past it (E[i] network evaluations per sample, not k - 1);
        its noise is drawn for the whole batch, so a sample's input does not depend on the others' steps."""
        sigmas = z.new_tensor(self.sigmas)
        x = self.denoiser.student_input(z, sigmas[0])
        for j in range(1, int(step.max()) + 1):
            later = step >= j
            x0 = self.denoiser(x[later], sigmas[j - 1].expand(int(later.sum())), None if cond is None else cond[later])
            x[later] = x0 + sigmas[j] * torch.randn_like(x)[later]
        return x, sigmas[step]

    @torch.no_grad()
    def sample(self, z: torch.Tensor, cond=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """All k steps from noise z: the student's sampler (what evaluation measures)."""
        return multistep_student(self.denoiser, z, z.new_tensor(self.sigmas), cond, generator)
