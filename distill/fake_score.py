"""What the fake score D_fake adds to its teacher copy: reading a module's output (the GAN head's features), and a
step embedding for k-step students (loss.step_aware_fake_score, an option of this toolkit, not DMD2's).

With one fake score for all k steps (DMD2), D_fake learns the mixture of the steps' outputs and DMD matches that
mixture to the data, not each step. A learned vector per step, added to D_fake's time embedding, makes it
D_fake(x, sigma | step): the score of each step's own outputs, so DMD matches every step to the data.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from teachers.errors import ConfigError


class _Reached(Exception):
    """Raised by module_output's hook to end a forward there: nothing after the module is needed."""


def module_output(denoiser: nn.Module, module: nn.Module, x: torch.Tensor, sigma, cond=None) -> torch.Tensor | None:
    """The output of `module` inside denoiser(x, sigma, cond), read with a forward hook that stops the forward there
    (the rest of the network is skipped); None when it gives no tensor. Gradients flow as usual."""
    found = []

    def stop(_module, _inputs, out):
        found.append(out)
        raise _Reached

    handle = module.register_forward_hook(stop)
    try:
        denoiser(x, sigma, cond)
    except _Reached:
        pass
    finally:
        handle.remove()
    return found[-1] if found and torch.is_tensor(found[-1]) else None


def find_time_embedding(denoiser: nn.Module) -> nn.Module:
    """The module whose output is the denoiser's noise-level embedding (`time_embedding` on the adapter)."""
    module = denoiser.time_embedding
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"loss.step_aware_fake_score=true needs a time embedding to add the step to, but {type(denoiser).__name__} "
            "has none (supported: UNetDenoiser, MLPDenoiser); set it to false"
        )
    return module


def probe_input(denoiser: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One zero input (and class label 0, or the empty prompt's embedding) to read a module's output size with."""
    x = torch.zeros(1, *tuple(denoiser.shape), device=next(denoiser.parameters()).device)
    cond = torch.zeros(1, dtype=torch.long, device=x.device) if denoiser.num_classes else None
    if denoiser.text_conditional:
        cond = denoiser.encode_condition([""]).to(x.device)
    return x, cond


class StepEmbedding(nn.Module):
    """One learned vector per student step, added to D_fake's time embedding; zero at the start, so D_fake starts as
    the teacher's copy (and a 1-step run's fake score warm-starts a k-step one unchanged)."""

    def __init__(self, num_steps: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(num_steps, dim)
        nn.init.zeros_(self.table.weight)

    @property
    def num_steps(self) -> int:
        return self.table.num_embeddings

    @contextlib.contextmanager
    def added(self, denoiser: nn.Module, step: torch.Tensor | None):
        """Inside, denoiser(x, sigma, cond) sees each sample's step (B,) in its time embedding; None: no step."""
        if step is None:
            yield
            return
        handle = find_time_embedding(denoiser).register_forward_hook(lambda _m, _i, out: out + self.table(step).to(out.dtype))
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def build_step_embedding(denoiser: nn.Module, num_steps: int) -> StepEmbedding:
    """A step embedding sized for the denoiser's time embedding (its output's last dimension)."""
    x, cond = probe_input(denoiser)
    emb = module_output(denoiser, find_time_embedding(denoiser), x, 1.0, cond)
    if emb is None:
        raise ConfigError(f"{type(denoiser).__name__}.time_embedding produced no tensor; set loss.step_aware_fake_score=false")
    return StepEmbedding(num_steps, emb.shape[-1]).to(x.device)
