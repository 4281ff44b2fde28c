"""Teacher ODE pairs (z_ref, y_ref[, condition row]) for the regression loss (DMD eq. 9), stored with HF datasets.

The pair set is cut into shards of seeds. Each shard draws its noise from its own seed, is written
atomically, and is skipped when already on disk: generation resumes after a crash, and process r of
W makes shards r, r + W, ... (split across processes) with the same result as one process.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, disable_progress_bars, load_from_disk
from tqdm.auto import tqdm

from eval.samplers import get_sampler
from teachers.conditions import Conditions
from teachers.errors import ConfigError
from teachers.io import write_folder_atomic


def shard_generator(seed: int, shard: int) -> torch.Generator:
    """An independent stream per (seed, shard), so a shard's noise does not depend on the others."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, shard]).generate_state(1)[0]))


def shard_dir(path: Path, shard: int) -> Path:
    return Path(path) / f"shard-{shard:05d}"


def make_shard(teacher, n: int, *, sigmas: torch.Tensor, sampler: str, conditions: Conditions | None, seed: int, shard: int, device) -> Dataset:
    """n pairs: seeded noise (and condition rows: class labels, or prompt indices) and the teacher's deterministic
    ODE output."""
    gen = shard_generator(seed, shard)
    noise = torch.randn(n, *teacher.shape, generator=gen)
    cond, label = conditions.draw(n, generator=gen) if conditions is not None else (None, None)
    target = get_sampler(sampler)(teacher, noise.to(device), sigmas.to(device), None if cond is None else cond.to(device))
    columns = {"noise": noise.numpy(), "target": target.float().cpu().numpy()}
    return Dataset.from_dict(columns | ({"label": label.numpy()} if label is not None else {}))


def generate_pairs(
    teacher, path: Path, num_pairs: int, *, sampler: str, num_steps: int, batch_size: int, seed: int,
    conditions: Conditions | None = None, rank: int = 0, world_size: int = 1, device="cpu", progress: bool = True,
) -> list[Path]:
    """Write this process's missing shards (batch_size pairs each) of the pair set under path."""
    disable_progress_bars()  # one bar over the shards, not one per save_to_disk
    sigmas = teacher.sampling_sigmas(num_steps)
    num_shards = math.ceil(num_pairs / batch_size)
    mine = [i for i in range(rank, num_shards, world_size) if not shard_dir(path, i).is_dir()]
    for i in tqdm(mine, desc="teacher ODE pairs", disable=not progress):
        n = min(batch_size, num_pairs - i * batch_size)
        shard = make_shard(teacher, n, sigmas=sigmas, sampler=sampler, conditions=conditions, seed=seed, shard=i, device=device)
        save_dataset_atomic(shard, shard_dir(path, i))
    return [shard_dir(path, i) for i in range(num_shards)]


def save_dataset_atomic(dataset: Dataset, path: Path) -> Path:
    """save_to_disk, written atomically: a half-written shard is never loaded."""
    return write_folder_atomic(path, lambda tmp: dataset.save_to_disk(str(tmp)))


def load_pairs(path: Path, num_pairs: int | None = None) -> tuple[torch.Tensor, ...]:
    """(z_ref, y_ref) float32 tensors, plus the condition rows (class labels, prompt indices) of conditional teachers,
    from all shards."""
    shards = sorted(Path(path).glob("shard-*"))
    data = concatenate_datasets([load_from_disk(str(s)) for s in shards]).with_format("torch") if shards else None
    if data is None or (num_pairs is not None and len(data) != num_pairs):
        found = 0 if data is None else len(data)
        raise ConfigError(f"{path} holds {found} teacher ODE pairs, expected {num_pairs}; delete it to regenerate")
    out = (data["noise"][:].float(), data["target"][:].float())
    return out + ((data["label"][:].long(),) if "label" in data.column_names else ())
