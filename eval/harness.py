"""Evaluate sample functions on the same seeds against the true data; write metrics.json."""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eval.plots import scatter_panels
from eval.shard import Shard
from eval.samplers import get_sampler, multistep_student, one_step, sampler_nfe
from eval.toy_metrics import toy_metrics
from teachers.gmm import GaussianMixture
from teachers.io import denoiser_digest


STUDENT_FILE = "student.json"  # {"sigmas": [...], "guidance_scale": w, "teacher": path}: how the student was trained


@dataclass(frozen=True)
class SampleFn:
    """A way to turn noise (B, *shape) ~ N(0, I) into samples, with its network evaluations."""

    nfe: int
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (noise, class labels or None) -> samples
    # () -> what makes its samples a pure function of (noise, labels): a deterministic sampler of a given network,
    # called only when a cache is consulted (eval/images.py; it hashes the weights); None (a student): always sampled.
    cache_key: Callable[[], dict] | None = None
    # index -> None: where the next batch starts among the seeds; a k-step student re-seeds its re-noising there, so
    # sample i is the same however the seeds are split into processes (eval/shard.py). None: nothing to re-seed.
    reseed: Callable[[int], None] | None = None


def teacher_sample_fns(denoiser, samplers: list[dict]) -> dict[str, SampleFn]:
    """The teacher's full sampler(s) on Karras sigmas, labelled teacher_<name>_nfe<N>; deterministic, so cacheable."""
    out, digest = {}, functools.cache(lambda: denoiser_digest(denoiser))  # hashed once, and only if a cache asks
    for spec in samplers:
        sampler, num_steps = get_sampler(spec["name"]), int(spec["num_steps"])
        sigmas = denoiser.sampling_sigmas(num_steps)
        nfe = sampler_nfe(spec["name"], num_steps, top=float(sigmas[0]))
        key = None
        if isinstance(denoiser, torch.nn.Module):  # the exact mixture (toy data) is not cached
            key = lambda name=spec["name"], n=num_steps: {"teacher_sha256": digest(), "sampler": name, "num_steps": n}  # noqa: E731
        out[f"teacher_{spec['name']}_nfe{nfe}"] = SampleFn(nfe, lambda z, c=None, s=sampler, sig=sigmas: s(denoiser, z, sig, c), key)
    return out


def student_sample_fn(student, sigmas: list[float] | None = None, seed: int = 0) -> SampleFn:
    """The student: one step D_student(sigma_max z, sigma_max), or k steps on its sigma list.

    A k-step student's re-noising for the batch that starts at seed index i draws from a generator seeded by
    (seed, i): the same images whatever process samples that batch."""
    if sigmas is None or len(sigmas) == 1:
        one = torch.tensor([student.sigma_max if sigmas is None else sigmas[0], 0.0])
        return SampleFn(1, lambda z, c=None: one_step(student, z, one.to(z.device), c))
    steps, first = torch.tensor(sigmas, dtype=torch.float32), {"index": 0}

    def sample(z, c=None):
        entropy = int(np.random.SeedSequence([seed, first["index"]]).generate_state(1)[0])
        return multistep_student(student, z, steps.to(z.device), c, torch.Generator(device=z.device).manual_seed(entropy))

    return SampleFn(len(sigmas), sample, reseed=lambda index: first.__setitem__("index", index))


def student_label(nfe: int) -> str:
    """metrics.json entry of a student: student_nfe<k>."""
    return f"student_nfe{nfe}"


def read_student_record(path) -> dict:
    """student.json beside an exported student (distill.export.student_record); {} for a folder without one."""
    from teachers.zoo import resolve_model_path

    file = Path(resolve_model_path(str(path))) / STUDENT_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def read_student_sigmas(path) -> list[float] | None:
    """The sigma list a student was trained on (its own conditioning sigma for one step), or None when not recorded."""
    return read_student_record(path).get("sigmas")


def timed_sampling(fn, noise: torch.Tensor, batch_size: int, cond: torch.Tensor | None = None, desc: str = "",
                   first: int = 0, reseed: Callable[[int], None] | None = None) -> tuple[torch.Tensor, float]:
    """All samples for the noise (and conds), in batches, and the wall seconds per sample (after a warm-up batch).
    Each batch's conds move to the noise's device as it is sampled: a prompt set's embeddings stay where they are.
    first: the seed index of noise[0] (a process's share, eval/shard.py); reseed(i) is called before the batch that
    starts at seed index i."""
    conds = [c.to(noise.device) for c in cond.split(batch_size)] if cond is not None else [None] * len(noise.split(batch_size))
    with torch.no_grad():
        fn(noise[: min(batch_size, 16)], None if cond is None else cond[: min(batch_size, 16)].to(noise.device))
        _synchronize(noise.device)
        start = time.perf_counter()
        chunks = tqdm(list(zip(noise.split(batch_size), conds)), desc=desc or "sampling", disable=not desc, mininterval=2)
        samples = []
        for i, (z, c) in enumerate(chunks):
            if reseed is not None:
                reseed(first + i * batch_size)
            samples.append(fn(z, c))
        samples = torch.cat(samples)
        _synchronize(noise.device)  # CUDA kernels run asynchronously: stop the clock when they are done
    return samples, (time.perf_counter() - start) / len(noise)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    """Merge entries into <run_dir>/metrics.json, atomically (write then rename)."""
    path = run_dir / "metrics.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(metrics)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def evaluate_toy(
    sample_fns: dict[str, SampleFn],
    mixture: GaussianMixture,
    run_dir: Path,
    *,
    num_samples: int,
    seed: int,
    feature_extractor: str,
    mode_recall_share: float,
    mode_radius_quantile: float,
    mmd_max_samples: int,
    batch_size: int = 10_000,
    shard: Shard = Shard(),
    **_read_by_caller,  # other eval keys (teacher_samplers) build the sample functions
) -> dict[str, dict]:
    """Every sampler from the same noise; figures against fresh mixture samples; metrics.json, npz and a PNG. With a
    shard, each process samples its share and the main process computes the figures ({} on the others)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, mixture.dim, generator=gen)
    reference = mixture.sample(num_samples, generator=gen)
    # A second fresh draw of the data: the figures a perfect sampler gets with this many samples (the main process's).
    data = {"data": SampleFn(0, lambda z, c=None: mixture.sample(len(z), generator=gen))}
    part = shard.span(num_samples, batch_size)
    drawn = {label: timed_sampling(fn.fn, noise[part], batch_size, first=part.start, reseed=fn.reseed)
             for label, fn in sample_fns.items() if part.start < part.stop}
    drawn = {label: (x.float().cpu().numpy(), seconds) for label, (x, seconds) in drawn.items()}
    parts = shard.gather(drawn)
    if not shard.main:
        return {}
    sampled = {label: (torch.from_numpy(np.concatenate([p[label][0] for p in parts if label in p])),
                       float(np.mean([p[label][1] for p in parts if label in p]))) for label in sample_fns}
    sampled = {"data": timed_sampling(data["data"].fn, noise, batch_size)} | sampled
    metrics, panels = {}, {}
    for label, sample_fn in (data | sample_fns).items():
        samples, seconds_per_sample = sampled[label]
        samples = samples.float().cpu()
        figures = toy_metrics(
            mixture, samples, reference,
            mode_recall_share=mode_recall_share, mode_radius_quantile=mode_radius_quantile, mmd_max_samples=mmd_max_samples,
        )
        metrics[label] = {
            "nfe": sample_fn.nfe, "num_samples": num_samples, "seconds_per_sample": seconds_per_sample,
            "feature_extractor": feature_extractor, "seed": seed, "num_processes": shard.num_processes, **figures,
        }
        out = run_dir / "samples" / label
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "samples.npz", samples=samples.numpy(), noise=noise.numpy())
        panels[f"{label} (NFE {sample_fn.nfe})" if sample_fn.nfe else "data"] = samples.numpy()
    scatter_panels(panels, run_dir / "grids" / "data_teacher_student.png", reference.numpy())
    write_metrics(run_dir, metrics)
    return metrics
