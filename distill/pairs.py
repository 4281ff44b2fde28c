"""Teacher ODE pairs (z_ref, y_ref) for the regression loss, generated once, stored with HF datasets."""
from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm

from eval.samplers import get_sampler, karras_sigmas
from teachers.io import write_folder_atomic


def generate_pairs(
    teacher, num_pairs: int, *, sampler: str, num_steps: int, batch_size: int, seed: int, progress: bool = True
) -> Dataset:
    """Run the teacher's deterministic sampler from seeded noise: columns `noise` (z) and `target` (y)."""
    sample = get_sampler(sampler)
    sigmas = karras_sigmas(num_steps, teacher.sigma_min, teacher.sigma_max)
    noise = torch.randn(num_pairs, *teacher.shape, generator=torch.Generator().manual_seed(seed))
    chunks = noise.split(batch_size)
    targets = [sample(teacher, z, sigmas) for z in tqdm(chunks, desc="teacher ODE pairs", disable=not progress)]
    return Dataset.from_dict({"noise": noise.numpy(), "target": torch.cat(targets).numpy()})


def save_dataset_atomic(dataset: Dataset, path: Path) -> Path:
    """save_to_disk, written atomically: a half-written pair set is never loaded."""
    return write_folder_atomic(path, lambda tmp: dataset.save_to_disk(str(tmp)))


def load_pairs(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_ref, y_ref) float32 tensors from a stored pair set."""
    data = load_from_disk(str(path)).with_format("torch")
    return data["noise"][:].float(), data["target"][:].float()
