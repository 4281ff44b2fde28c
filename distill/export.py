"""Export the student as a diffusers model folder (config.json + safetensors)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf

from distill.checkpoint import COMPLETE_MARKER, load_checkpoint
from distill.tasks import teacher_path
from eval.harness import STUDENT_FILE
from teachers.errors import ConfigError
from teachers.io import load_denoiser, write_folder_atomic


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


def run_config(run_dir: Path) -> DictConfig:
    """The resolved config a run wrote (config.yaml): what rebuilds its student from a checkpoint."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml, so not a run directory of `python -m distill`")
    return OmegaConf.load(path)


def student_from_checkpoint(checkpoint: Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict]:
    """The student denoiser of a sealed checkpoint (its EMA weights unless use_ema=False) and its student_record.

    The architecture comes from the run's teacher (config.yaml beside checkpoints/); raises CorruptCheckpoint for a
    checkpoint whose files do not match its manifest, ConfigError for a folder that is not a checkpoint."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise ConfigError(f"{checkpoint}: not a complete checkpoint (no {COMPLETE_MARKER} manifest: half-written, or not a checkpoint)")
    tensors, _ = load_checkpoint(checkpoint)
    run_dir = checkpoint.parent.parent
    cfg = run_config(run_dir)
    student = load_denoiser(teacher_path(cfg, run_dir))
    student.load_state_dict(tensors["student"])
    if use_ema and "ema" in tensors:  # EMAModel's shadow params, in student.parameters() order (TrainState)
        for i, param in enumerate(student.parameters()):
            param.data.copy_(tensors["ema"][str(i)])
    teacher = None if cfg.teacher.path is None else str(cfg.teacher.path)
    record = student_record(cfg.student.sigmas or [student.sigma_max], cfg.loss.guidance_scale, teacher)
    return student.eval().requires_grad_(False), record
