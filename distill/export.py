"""Export the student as a diffusers model folder (config.json + safetensors)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from diffusers.training_utils import EMAModel

from eval.harness import STUDENT_FILE
from teachers.io import write_folder_atomic


def student_weights(student, ema: EMAModel | None):
    """A frozen copy of the student with the EMA weights in it when there is an EMA."""
    export = copy.deepcopy(student).eval().requires_grad_(False)
    if ema is not None:
        ema.copy_to(export.parameters())
    return export


def export_student(student, ema: EMAModel | None, path: Path, sigmas: list[float] | None = None) -> Path:
    """The student's (EMA) weights, saved atomically with save_pretrained; a multi-step student's sigma list
    goes beside them in student.json, so `python -m eval` samples it the way it was trained."""
    model = student_weights(student, ema)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if sigmas is not None and len(sigmas) > 1:
            (Path(tmp) / STUDENT_FILE).write_text(json.dumps({"sigmas": [float(s) for s in sigmas]}) + "\n")

    return write_folder_atomic(path, write)
