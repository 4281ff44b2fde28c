"""Safe, atomic model files: safetensors in, safetensors out, never a pickle that runs code."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from teachers.errors import ConfigError
from teachers.dit import DiTDenoiser, check_dit_folder, is_dit_pipeline
from teachers.latent import LatentDenoiser, check_pipeline_folder, is_text_pipeline, torch_dtype
from teachers.mlp import MLPDenoiser
from teachers.unet import UNetDenoiser

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
PICKLE_FILE = "diffusion_pytorch_model.bin"


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


def is_pipeline(path: Path) -> bool:
    """A diffusers pipeline folder (model_index.json or unet/): the UNet adapter's format."""
    return (path / "model_index.json").is_file() or (path / "unet").is_dir()


FOLDER_HINTS = {  # what to do about a bad model folder
    "teacher": "train one with `python -m teachers.train`, or set teacher.path=null to train it inside the run",
    "student": "give the student/ folder that `python -m distill` exports into its run dir",
}


def check_teacher_folder(path: Path, key: str = "teacher.path") -> None:
    """A teacher folder has config.json and its weights (safetensors, or a tensors-only .bin); a pipeline, in unet/;
    a Stable Diffusion pipeline, every component. key names the setting that gave the path (an exported student has
    the same layout)."""
    if is_text_pipeline(path):
        check_pipeline_folder(path, key)
    if is_dit_pipeline(path):
        check_dit_folder(path, key)
        return
    model_dir = path / "unet" if is_pipeline(path) else path
    has_weights = (model_dir / SAFETENSORS_FILE).is_file() or (model_dir / PICKLE_FILE).is_file()
    expected = ((CONFIG_FILE, (model_dir / CONFIG_FILE).is_file()), (SAFETENSORS_FILE, has_weights))
    if is_pipeline(path):
        expected += (("scheduler/scheduler_config.json", (path / "scheduler" / "scheduler_config.json").is_file()),)
    missing = [str((model_dir / f).relative_to(path)) if "/" not in f else f for f, ok in expected if not ok]
    if missing:
        what = "student" if "student" in key else "teacher"
        raise ConfigError(f"{key}={path} is not a {what} folder (missing {', '.join(missing)}); {FOLDER_HINTS[what]}")


def read_model_config(path: Path) -> dict:
    """config.json of a model folder, with a clear error when it is not valid json."""
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{Path(path) / CONFIG_FILE} is not a readable model config: {err}") from None


def load_model(path: Path, dtype: str | None = None):
    """The MLP denoiser of a model folder, the UNet adapter of a pipeline folder, or the latent adapter of a Stable
    Diffusion pipeline folder."""
    if is_text_pipeline(path):
        return LatentDenoiser.from_pretrained(path, dtype=torch_dtype(dtype))
    if is_dit_pipeline(path):
        return DiTDenoiser.from_pretrained(path, dtype=torch_dtype(dtype))
    if is_pipeline(path):
        read_model_config(path / "unet")
        return UNetDenoiser.from_pretrained(path)
    if (path / SAFETENSORS_FILE).is_file():
        return MLPDenoiser.from_pretrained(path, use_safetensors=True)
    model = MLPDenoiser.from_config(MLPDenoiser.load_config(path))
    model.load_state_dict(safe_torch_load(path / PICKLE_FILE))
    return model


def is_hub_id(path: str | Path) -> bool:
    """`owner/name` that is not a local path: a hub id (loading it needs network)."""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/"))


def load_denoiser(path: str | Path, key: str = "teacher.path", kind: str | None = None, dtype: str | None = None):
    """Load a model folder (teacher or exported student), frozen; safetensors preferred, pickles only tensors-only.

    A string that is not a local folder but looks like `owner/name` is a hub id (network needed; `kind` says which
    adapter, sd or unet). key names the setting that gave the path, in errors; dtype (teacher.dtype) the precision
    of a Stable Diffusion teacher's frozen parts."""
    if is_hub_id(path):
        if kind in ("sd", "dit"):
            adapter = LatentDenoiser if kind == "sd" else DiTDenoiser
            return adapter.from_pretrained(str(path), dtype=torch_dtype(dtype)).eval().requires_grad_(False)
        return UNetDenoiser.from_pretrained(str(path)).eval().requires_grad_(False)
    path = Path(path)
    check_teacher_folder(path, key)
    if not is_pipeline(path):
        read_model_config(path)
    try:
        model = load_model(path, dtype)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (diffusers and safetensors raise many kinds; all mean "unreadable")
        raise ConfigError(f"cannot load the model in {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return model.eval().requires_grad_(False)
