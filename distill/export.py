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


def student_record(sigmas: list[float], guidance_scale: float = 1.0, teacher: str | None = None) -> dict:
    """What `python -m eval` needs beside the weights to sample and judge the student as it was trained: its sigma list
    (one entry for one step: its own conditioning sigma), and the real score's CFG scale with the teacher it refers to."""
    return {"sigmas": [float(s) for s in sigmas], "guidance_scale": float(guidance_scale), "teacher": teacher}


def export_student(student, ema: EMAModel | None, path: Path, record: dict) -> Path:
    """The student's (EMA) weights, saved atomically with save_pretrained, with `record` (student_record) beside them
    in student.json, so `python -m eval` samples and judges it the way it was trained."""
    model = student_weights(student, ema)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / STUDENT_FILE).write_text(json.dumps(record) + "\n")

    return write_folder_atomic(path, write)
