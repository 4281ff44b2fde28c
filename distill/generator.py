"""The student G: a trainable copy of the teacher denoiser, used at sigma_max (one step)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from eval.samplers import one_step


def trainable_copy(network: nn.Module) -> nn.Module:
    """A deep copy of a teacher network in train mode with gradients on (student, fake score)."""
    return copy.deepcopy(network).train().requires_grad_(True)


class OneStepGenerator(nn.Module):
    """G(z, cond) = D_student(sigma_max z, sigma_max, cond); z ~ N(0, I) of the data shape."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.sigma_max = float(denoiser.sigma_max)  # a plain float, not a buffer: DDP broadcasts buffers

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        return one_step(self.denoiser, z, z.new_tensor([self.sigma_max, 0.0]), cond)
