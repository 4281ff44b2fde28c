"""What a distillation checkpoint holds, how every process writes its part, and how it is put back."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from distill.checkpoint import CorruptCheckpoint, flatten_optimizer_state, last_sealed_note, seal, staging_dir, unflatten_optimizer_state, write_json, write_tensors
from distill.guard import EXIT_NON_FINITE
from distill.rng import rng_state, set_rng_state
from distill.sharding import full, full_optimizer_state, full_state_dict, load_full_optimizer_state, load_full_state_dict, shaped_like
from teachers.errors import TrainingStopped


@dataclass
class Counters:
    """Progress of a run. Each step is N fake-score updates then one student update, and checkpoints
    fall between steps, so the two time-scale rule is always at phase 0 there."""

    step: int = 0
    student_updates: int = 0
    fake_updates: int = 0
    train_seconds: float = 0.0  # wall clock of the training loop, over resumes (train.max_minutes)
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class TrainState:
    """The networks (and GAN head), optimizers and EMA of a run; the checkpoint holds all of them, the counters,
    every process's RNG and (with fp16) the grad scaler."""

    student: torch.nn.Module
    fake_score: torch.nn.Module
    student_optimizer: torch.optim.Optimizer
    fake_optimizer: torch.optim.Optimizer
    ema: EMAModel | None
    gan_head: torch.nn.Module | None = None  # DMD2's classifier on D_fake's bottleneck; trained by fake_optimizer
    step_embedding: torch.nn.Module | None = None  # loss.step_aware_fake_score; trained by fake_optimizer (its last group)

    def tensors_and_json(self, counters: Counters, scaler=None) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Everything the main process saves: tensors for safetensors files, the rest as json. Every process calls it:
        sharded (FSDP) weights and moments are gathered whole, the format of one process."""
        opt_g, rest_g = flatten_optimizer_state(full_optimizer_state(self.student_optimizer))
        opt_f, rest_f = flatten_optimizer_state(full_optimizer_state(self.fake_optimizer))
        tensors = {
            "student": full_state_dict(self.student),
            "fake_score": full_state_dict(self.fake_score),
            "student_optimizer": opt_g,
            "fake_optimizer": opt_f,
        }
        state = {"counters": vars(counters), "student_optimizer": rest_g, "fake_optimizer": rest_f}
        state["data_position"] = "regression batches are drawn with the torch RNG, saved per process in rng-<rank>"
        if self.gan_head is not None:
            tensors["gan_head"] = full_state_dict(self.gan_head)
        if self.step_embedding is not None:
            tensors["step_embedding"] = full_state_dict(self.step_embedding)
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            tensors["ema"] = {str(i): full(p) for i, p in enumerate(ema_state.pop("shadow_params"))}
            state["ema"] = ema_state
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        return tensors, state

    def weights_finite(self) -> bool:
        """True when no weight of the student, fake score or EMA is NaN or infinite (every process calls it: a sharded
        weight is checked whole)."""
        extras = [p for m in (self.gan_head, self.step_embedding) if m is not None for p in m.parameters()]
        tensors = [*self.student.parameters(), *self.fake_score.parameters(), *extras, *(self.ema.shadow_params if self.ema else [])]
        return all([bool(torch.isfinite(full(t)).all()) for t in tensors])  # a list: every gather runs on every process

    def restore(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict, rank: int, scaler=None) -> Counters:
        """Put a loaded checkpoint back (this process's RNG included; whole tensors, sharded where the networks are);
        returns its counters."""
        load_full_state_dict(self.student, tensors["student"])
        load_full_state_dict(self.fake_score, tensors["fake_score"])
        if self.gan_head is not None:
            if "gan_head" not in tensors:
                raise CorruptCheckpoint("it has no GAN head, but this run has one (loss.gan_*_weight > 0); resume with the GAN off")
            load_full_state_dict(self.gan_head, tensors["gan_head"])
        fake_optimizer = unflatten_optimizer_state(tensors["fake_optimizer"], state["fake_optimizer"])
        if self.restore_step_embedding(tensors):
            fake_optimizer = with_new_groups(fake_optimizer, self.fake_optimizer.state_dict())
        load_full_optimizer_state(self.student_optimizer, unflatten_optimizer_state(tensors["student_optimizer"], state["student_optimizer"]))
        load_full_optimizer_state(self.fake_optimizer, fake_optimizer)
        if self.ema is not None:
            shadow = [shaped_like(tensors["ema"][str(i)], p) for i, p in enumerate(self.student.parameters())]
            self.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
        if scaler is not None and "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        if f"rng-{rank}" in tensors:
            set_rng_state(tensors[f"rng-{rank}"])
        else:
            warnings.warn(f"the checkpoint has no RNG state for process {rank} (another process count?); keeping the seeded RNG", stacklevel=2)
        return Counters(**state["counters"])

    def init_from(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
        """Start a new stage from an earlier run's checkpoint (train.init_from): the student from its EMA weights when
        it has them, the fake score (and GAN head, step embedding) as saved; optimizers, counters and the EMA fresh
        (a head or step embedding the checkpoint lacks starts as built)."""
        load_full_state_dict(self.student, tensors["student"])
        if "ema" in tensors:  # EMAModel's shadow params, in student.parameters() order
            for i, param in enumerate(self.student.parameters()):
                param.data.copy_(shaped_like(tensors["ema"][str(i)], param))
        load_full_state_dict(self.fake_score, tensors["fake_score"])
        if self.gan_head is not None and "gan_head" in tensors:
            load_full_state_dict(self.gan_head, tensors["gan_head"])
        if self.step_embedding is not None and "step_embedding" in tensors:
            load_full_state_dict(self.step_embedding, tensors["step_embedding"])
        if self.ema is not None:
            self.ema.shadow_params = [p.detach().clone() for p in self.student.parameters()]

    def restore_step_embedding(self, tensors: dict[str, dict[str, torch.Tensor]]) -> bool:
        """Load the step embedding; True when the checkpoint has none (a warm start from a run without it: it stays
        zero, so the fake score goes on unchanged, and its optimizer group starts fresh)."""
        saved = tensors.get("step_embedding")
        if self.step_embedding is None:
            if saved is not None:
                raise CorruptCheckpoint("it has a step-aware fake score, but this run has none; resume with "
                                        "loss.step_aware_fake_score=true and the same student.sigmas")
            return False
        if saved is None:
            warnings.warn("the checkpoint has no step embedding (a run without loss.step_aware_fake_score): it starts at zero", stacklevel=3)
            return True
        steps, ours = saved["table.weight"].shape[0], self.step_embedding.num_steps
        if steps != ours:
            raise CorruptCheckpoint(f"its fake score's step embedding is for {steps} student steps, this run's student has {ours}")
        load_full_state_dict(self.step_embedding, saved)
        return False


def with_new_groups(saved: dict, current: dict) -> dict:
    """An optimizer state saved with fewer param groups than the optimizer now has (groups added at the end, e.g. a
    step embedding on a warm start): the saved groups and state, then the current extra groups with fresh state."""
    count, groups = sum(len(g["params"]) for g in saved["param_groups"]), list(saved["param_groups"])
    for group in current["param_groups"][len(groups):]:
        groups.append({**group, "params": list(range(count, count + len(group["params"])))})
        count += len(group["params"])
    return {"state": saved["state"], "param_groups": groups}


def save_training_state(accelerator: Accelerator, state: TrainState, counters: Counters, root: Path, keep_last: int) -> Path:
    """Every process writes its RNG into the staging folder; the main process writes the rest and seals it."""
    if not state.weights_finite():
        raise TrainingStopped(f"non-finite weights at step {counters.step}; they were not saved; {last_sealed_note(root)}", EXIT_NON_FINITE)
    staging, main = staging_dir(root, counters.step), accelerator.is_main_process
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write_tensors(staging, f"rng-{accelerator.process_index}", rng_state())
    accelerator.wait_for_everyone()
    final = root / f"step-{counters.step}"
    tensors, meta = state.tensors_and_json(counters, accelerator.scaler)  # on every process: sharded weights are gathered
    if main:
        for name, values in tensors.items():
            write_tensors(staging, name, values)
        write_json(staging, "state", meta)
        seal(staging, root, counters.step, keep_last)
    accelerator.wait_for_everyone()
    return final
