"""Evaluate stored models: the teacher's full sampler(s) and an exported student, on the same seeds."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.harness import evaluate_toy, student_sample_fn, teacher_sample_fns
from teachers.errors import ConfigError
from teachers.gmm import GMMDenoiser, mixture_from_lists
from teachers.io import load_denoiser


def run(cfg: DictConfig) -> dict:
    """Write metrics.json, samples and a comparison PNG into the run dir."""
    mixture = mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
    if cfg.teacher.real == "analytic":
        teacher = GMMDenoiser(mixture)
    elif cfg.teacher.path is None:
        raise ConfigError("teacher.path is null; give a teacher folder, or teacher=gmm_exact for the exact mixture")
    else:
        teacher = load_denoiser(cfg.teacher.path)
    student = load_denoiser(cfg.student_path) if cfg.student_path else None
    for name, model in (("teacher.path", teacher), ("student_path", student)):
        if model is not None and model.shape != (mixture.dim,):
            raise ConfigError(f"{name} is a model of shape {model.shape} but the data is {mixture.dim}-D")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    sample_fns = teacher_sample_fns(teacher, cfg.eval.teacher_samplers)
    if student is not None:
        sample_fns["student_nfe1"] = student_sample_fn(student)
    return evaluate_toy(sample_fns, mixture, run_dir, **cfg.eval)
