"""Stop conditions of a run: non-finite updates (skipped, counted, capped), SIGTERM (preemption) and a time budget."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from distill.checkpoint import last_sealed
from teachers.errors import TrainingStopped

EXIT_NON_FINITE = 3
EXIT_SIGTERM = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True when flag (a bool, or a one-element tensor on any device) is true on at least one process.

    One process: no device tensor is made for a Python flag (each would be a host-device round trip per step);
    several: an all-reduce."""
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.as_tensor(flag, device=accelerator.device).float().reshape(1)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


class NonFiniteGuard:
    """Counts skipped updates per network; stops the run after max_consecutive in a row."""

    def __init__(self, max_consecutive: int, checkpoints: Path, skipped: dict[str, int] | None = None):
        self.max_consecutive, self.checkpoints = max_consecutive, checkpoints
        self.skipped = dict(skipped or {})
        self.consecutive: dict[str, int] = {}

    def record(self, network: str, skipped: bool, step: int) -> None:
        """Count one update of network; raise TrainingStopped at max_consecutive skips in a row."""
        self.consecutive[network] = self.consecutive.get(network, 0) + 1 if skipped else 0
        self.skipped[network] = self.skipped.get(network, 0) + int(skipped)
        if self.consecutive[network] >= self.max_consecutive:
            last_checkpoint = last_sealed(self.checkpoints) or "none (none saved yet)"
            raise TrainingStopped(
                f"{self.max_consecutive} consecutive non-finite updates of the {network} (step {step}); "
                f"the last good checkpoint is {last_checkpoint}. Lower its learning rate or train.grad_clip, then re-run to resume",
                EXIT_NON_FINITE,
            )


class StopRequest:
    """Remembers a SIGTERM (SLURM sends it before preemption) so the loop can checkpoint and exit."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        self.received = True


class TimeBudget:
    """Wall-clock minutes for the training loop, summed over resumes (the checkpoint keeps the seconds spent)."""

    def __init__(self, max_minutes: float | None, spent_seconds: float = 0.0):
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self._start = time.monotonic() - spent_seconds

    def seconds(self) -> float:
        """Training seconds so far, earlier runs of the same directory included."""
        return time.monotonic() - self._start

    def expired(self) -> bool:
        return self.max_seconds is not None and self.seconds() >= self.max_seconds
