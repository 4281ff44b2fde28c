"""Export the student as a diffusers model folder (config.json + safetensors)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from diffusers.training_utils import EMAModel


def student_weights(student, ema: EMAModel | None):
    """A frozen copy of the student with the EMA weights in it when there is an EMA."""
    export = copy.deepcopy(student).eval().requires_grad_(False)
    if ema is not None:
        ema.copy_to(export.parameters())
    return export


def export_student(student, ema: EMAModel | None, path: Path) -> Path:
    """save_pretrained into a temporary folder, then rename into place."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student_weights(student, ema).save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
