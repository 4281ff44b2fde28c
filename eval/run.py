"""Evaluate stored models: the teacher's full sampler(s) and an exported student, on the same seeds."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from eval.harness import SampleFn, denoiser_digest, evaluate_toy, read_student_record, read_student_sigmas, student_label, student_sample_fn, teacher_sample_fns
from eval.images import evaluate_images, full_sampler_label
from eval.shard import Shard, launched_shard
from teachers.conditions import conditions_for
from teachers.data import check_fits, load_images
from teachers.errors import ConfigError
from teachers.gmm import GMMDenoiser, mixture_from_lists
from teachers.guidance import GuidedDenoiser
import teachers

log = logging.getLogger(__name__)


def load_models(cfg: DictConfig):
    """The teacher (or the exact mixture denoiser) and the student, if given."""
    if cfg.teacher.get("real") == "analytic":
        teacher = GMMDenoiser(mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights))
    elif cfg.teacher.path is None:
        raise ConfigError("teacher.path is null; give a teacher folder, or teacher=gmm_exact for the exact mixture")
    else:
        teacher = teachers.load(cfg.teacher.path, dtype=cfg.teacher.get("dtype"))
    record = read_student_record(cfg.student_path) if cfg.student_path else {}
    student = teachers.load(cfg.student_path, key="student_path", family=record.get("family")) if cfg.student_path else None
    scale = guidance_scale(cfg)
    return (teacher if scale == 1 else GuidedDenoiser(teacher, scale)), student


def guidance_scale(cfg: DictConfig) -> float:
    """The teacher's CFG scale: `guidance_scale` when set, else the one the student was distilled with (its
    student.json), else 1; a student distilled against another teacher is named in a warning."""
    record = read_student_record(cfg.student_path) if cfg.get("student_path") else {}
    if record.get("teacher") and str(record["teacher"]) != str(cfg.teacher.path):
        log.warning("student_path=%s was distilled against teacher %s; evaluating against teacher.path=%s",
                    cfg.student_path, record["teacher"], cfg.teacher.path)
    scale = cfg.get("guidance_scale")
    return float(record.get("guidance_scale", 1.0) if scale is None else scale)


def student_sigmas(cfg: DictConfig) -> list[float] | None:
    """A distillation run's student sigma list (student.sigmas), or the one stored with an exported student."""
    if "student" in cfg and cfg.student.get("sigmas") is not None:
        return list(cfg.student.sigmas)
    return read_student_sigmas(cfg.student_path) if cfg.get("student_path") else None


def run(cfg: DictConfig) -> dict:
    """Write metrics.json, samples and a comparison PNG into the run dir. Started by torchrun or `accelerate launch`,
    each process samples its share of the seeds and the main process writes the figures."""
    image = cfg.data.get("kind", "toy") == "image"
    shard, launched = launched_shard()
    device = torch.device("cuda" if image and torch.cuda.is_available() else "cpu")  # toy evaluation stays on the CPU
    device = launched if image and launched is not None else device  # each process its own GPU
    teacher, student = load_models(cfg)
    if image:
        teacher, student = teacher.to(device), None if student is None else student.to(device)
        images, _ = load_images(cfg.data, "test")
        for name, model in (("teacher.path", teacher), ("student_path", student)):
            if model is not None and not model.latent:  # latents are not images
                check_fits(images, model.shape, f"data={cfg.data.name} vs {name}")
    else:
        mixture = mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
        for name, model in (("teacher.path", teacher), ("student_path", student)):
            if model is not None and model.shape != (mixture.dim,):
                raise ConfigError(f"{name} is a model of shape {model.shape} but the data is {mixture.dim}-D")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if shard.main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    return evaluate_models(cfg, teacher, student, run_dir, device, mixture=None if image else mixture, shard=shard)


def evaluate_models(cfg: DictConfig, teacher, student, run_dir: Path, device, mixture=None, shard: Shard = Shard()) -> dict:
    """The teacher's samplers and, if given, the student on the same seeds: toy metrics with a mixture, else FID. With
    a shard, this process samples its share and the main process returns the figures ({} on the others)."""
    sample_fns = teacher_sample_fns(teacher, cfg.eval.teacher_samplers)
    if student is not None:
        sample_fn = student_sample_fn(student, student_sigmas(cfg), seed=cfg.eval.seed)
        sample_fns[student_label(sample_fn.nfe)] = sample_fn
    if mixture is not None:
        return evaluate_toy(sample_fns, mixture, run_dir, shard=shard, **cfg.eval)
    base = teacher.unguided  # a guided real score's own teacher: its conditions and its VAE
    conditions = conditions_for(base, cfg.data, "test", cfg.eval.cache_dir, shard)  # prompt embeddings: in shares
    if base.latent:  # a latent teacher: every sampler's time and images include the VAE decode
        crop, size = cfg.eval.get("center_crop"), cfg.data.get("resolution")
        sample_fns = {label: decoded(fn, base, crop, size) for label, fn in sample_fns.items()}
    return evaluate_images(
        sample_fns, data_cfg=cfg.data, eval_cfg=cfg.eval, run_dir=run_dir, shape=teacher.shape,
        conditions=conditions, full_sampler=full_sampler_label(list(sample_fns)), device=device, shard=shard,
    )


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """The central size x size pixels (eval.center_crop; the miniature SD pads 28 px digits to 32); None: as they are."""
    if size is None:
        return images
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ConfigError(f"eval.center_crop={size} is larger than the decoded images ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def lanczos_resize(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Generated images NCHW in [-1, 1] through the reference images' pipeline (data.resolution): uint8, center crop
    to a square, PIL Lanczos to resolution x resolution; None or the size already: as they are."""
    if resolution is None or tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    from PIL import Image

    from teachers.data import center_crop_resize

    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    out = [np.asarray(center_crop_resize(Image.fromarray(p[..., 0] if mode == "L" else p, mode), resolution)) for p in pixels]
    resized = torch.from_numpy(np.stack(out)).reshape(len(out), resolution, resolution, -1).permute(0, 3, 1, 2)
    return (resized.float() / 127.5 - 1).to(images.device)


def decoded(sample_fn: SampleFn, teacher, crop: int | None, resolution: int | None = None) -> SampleFn:
    """The sampler followed by the latent teacher's VAE decode, eval.center_crop and data.resolution: it makes images
    the way the reference images were made."""
    fn, key = sample_fn.fn, sample_fn.cache_key
    cache_key = None if key is None else (lambda: key() | {"vae_sha256": denoiser_digest(teacher.decoder_module()), "center_crop": crop,
                                                            **({"resolution": resolution} if resolution else {})})
    return replace(sample_fn, fn=lambda z, c=None: lanczos_resize(center_crop(teacher.decode(fn(z, c)), crop), resolution), cache_key=cache_key)
