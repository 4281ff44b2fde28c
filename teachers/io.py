"""Safe, atomic model files: safetensors in, safetensors out, never a pickle that runs code."""
from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from teachers.errors import ConfigError
from teachers.mlp import MLPDenoiser

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


def write_folder_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) fills a temporary folder, which then replaces path: a half-written folder is never read."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def save_pretrained_atomic(model, path: Path) -> Path:
    """save_pretrained (config.json + safetensors), written atomically."""
    return write_folder_atomic(path, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def check_teacher_folder(path: Path) -> None:
    """A teacher folder has config.json and its weights (safetensors, or a tensors-only .bin)."""
    has_weights = (path / SAFETENSORS_FILE).is_file() or (path / PICKLE_FILE).is_file()
    missing = [f for f, ok in ((CONFIG_FILE, (path / CONFIG_FILE).is_file()), (SAFETENSORS_FILE, has_weights)) if not ok]
    if missing:
        raise ConfigError(
            f"teacher.path={path} is not a teacher folder (missing {', '.join(missing)}); "
            "train one with `python -m teachers.train`, or set teacher.path=null to train it inside the run"
        )


def read_model_config(path: Path) -> dict:
    """config.json of a model folder, with a clear error when it is not valid json."""
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{Path(path) / CONFIG_FILE} is not a readable model config: {err}") from None


def load_denoiser(path: str | Path) -> MLPDenoiser:
    """Load a model folder (teacher or exported student), frozen; safetensors preferred, pickles only tensors-only."""
    path = Path(path)
    check_teacher_folder(path)
    read_model_config(path)
    try:
        if (path / SAFETENSORS_FILE).is_file():
            model = MLPDenoiser.from_pretrained(path, use_safetensors=True)
        else:
            model = MLPDenoiser.from_config(MLPDenoiser.load_config(path))
            model.load_state_dict(safe_torch_load(path / PICKLE_FILE))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (diffusers and safetensors raise many kinds; all mean "unreadable")
        raise ConfigError(f"cannot load the model in {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return model.eval().requires_grad_(False)
