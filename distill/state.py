"""What a distillation checkpoint holds, and how it is put back."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.training_utils import EMAModel

from distill.checkpoint import flatten_optimizer_state, unflatten_optimizer_state


@dataclass
class TrainState:
    """The networks, optimizers and EMA of a run; the checkpoint holds all of them plus the RNG."""

    student: torch.nn.Module
    fake_score: torch.nn.Module
    student_optimizer: torch.optim.Optimizer
    fake_optimizer: torch.optim.Optimizer
    ema: EMAModel | None

    def tensors_and_json(self, step: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Everything to save: tensors for safetensors files, the rest as json."""
        opt_g, rest_g = flatten_optimizer_state(self.student_optimizer.state_dict())
        opt_f, rest_f = flatten_optimizer_state(self.fake_optimizer.state_dict())
        tensors = {
            "student": self.student.state_dict(),
            "fake_score": self.fake_score.state_dict(),
            "student_optimizer": opt_g,
            "fake_optimizer": opt_f,
            "rng": {"torch": torch.get_rng_state()},
        }
        state = {"step": step, "student_optimizer": rest_g, "fake_optimizer": rest_f}
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            tensors["ema"] = {str(i): p for i, p in enumerate(ema_state.pop("shadow_params"))}
            state["ema"] = ema_state
        return tensors, state

    def restore(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> int:
        """Put a loaded checkpoint back; returns its step."""
        self.student.load_state_dict(tensors["student"])
        self.fake_score.load_state_dict(tensors["fake_score"])
        self.student_optimizer.load_state_dict(unflatten_optimizer_state(tensors["student_optimizer"], state["student_optimizer"]))
        self.fake_optimizer.load_state_dict(unflatten_optimizer_state(tensors["fake_optimizer"], state["fake_optimizer"]))
        if self.ema is not None:
            shadow = [tensors["ema"][str(i)] for i in range(len(tensors["ema"]))]
            self.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        torch.set_rng_state(tensors["rng"]["torch"])
        return int(state["step"])
