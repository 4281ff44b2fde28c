"""Scalars of each logged step: tensorboard (through accelerate) and train_log.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from accelerate import Accelerator


class ScalarLog:
    """Appends {"step": N, ...} lines to <run_dir>/train_log.jsonl on the main process."""

    def __init__(self, accelerator: Accelerator, run_dir: Path):
        self.accelerator = accelerator
        self.path = run_dir / "train_log.jsonl"
        if accelerator.is_main_process and self.path.exists():
            drop_partial_last_line(self.path)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.accelerator.log(scalars, step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")


def drop_partial_last_line(path: Path) -> None:
    """Cut a line that a killed run left half-written, so that appended lines stay valid json."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
