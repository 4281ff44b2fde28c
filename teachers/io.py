"""Safe, atomic model files: safetensors in, safetensors out, never a pickle that runs code."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from teachers.errors import ConfigError



def safe_torch_load(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers load, code-carrying pickles are refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"refusing to unpickle {path}: it holds more than tensors and would run code ({first}); convert it to safetensors") from None
    except (OSError, RuntimeError, EOFError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_folder_atomic(path: Path, write: Callable[[Path], object], keep_existing: bool = False) -> Path:
    """write(tmp) fills a temporary folder of this process, which then replaces path: a half-written folder is never
    read. keep_existing (caches shared by parallel sweep runs): a folder another process completed first is kept,
    never deleted under a reader."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # per process: two writers never share a temporary folder
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if not keep_existing and path.exists():
        path.rename(old)  # set aside, not deleted, until the new folder is in place: a kill leaves one whole folder
    try:
        tmp.rename(path)
    except OSError:  # path exists again (another process renamed its complete folder first): keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_dir():
            raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def save_pretrained_atomic(model, path: Path) -> Path:
    """save_pretrained (config.json + safetensors), written atomically."""
    return write_folder_atomic(path, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def denoiser_digest(denoiser: torch.nn.Module) -> str:
    """sha256 of a denoiser's (or a VAE's) weights and buffers, its EDM constants and, for a guided one, its scale:
    what its samples depend on besides the noise (cached teacher samples are keyed by it)."""
    constants = {k: getattr(denoiser, k, None) for k in ("sigma_min", "sigma_max", "sigma_data", "scale", "null_class")}
    digest = hashlib.sha256(f"{type(denoiser).__name__}{sorted(constants.items())}".encode())
    for name, tensor in sorted(denoiser.state_dict().items()):
        digest.update(name.encode())
        # Its bytes (the same as NumPy's for the dtypes NumPy has; bfloat16, a teacher.dtype, it has not).
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
