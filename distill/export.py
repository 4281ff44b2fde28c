"""Export the student as a diffusers model folder (config.json + safetensors)."""
from __future__ import annotations

import copy
from pathlib import Path

from diffusers.training_utils import EMAModel

from teachers.io import save_pretrained_atomic


def student_weights(student, ema: EMAModel | None):
    """A frozen copy of the student with the EMA weights in it when there is an EMA."""
    export = copy.deepcopy(student).eval().requires_grad_(False)
    if ema is not None:
        ema.copy_to(export.parameters())
    return export


def export_student(student, ema: EMAModel | None, path: Path) -> Path:
    """The student's (EMA) weights, saved atomically with save_pretrained."""
    return save_pretrained_atomic(student_weights(student, ema), path)
