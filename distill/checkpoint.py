"""Complete, atomically written training state: checkpoints/step-N/ (safetensors + json).

A checkpoint is staged in checkpoints/.step-N.partial (every process may write its own files
there), fsynced, sealed by a COMPLETE manifest holding every file's sha256, then renamed into
place. Only sealed folders whose files match their hashes are ever loaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load, save_file

from teachers.io import sha256_of

COMPLETE_MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")


class CorruptCheckpoint(RuntimeError):
    """A sealed checkpoint whose files are missing, truncated or altered."""


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every sealed checkpoint under root, oldest first; partial ones are ignored."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return sorted((step, p) for step, p in found if (p / COMPLETE_MARKER).is_file())


def last_sealed(root: Path) -> Path | None:
    """The newest sealed checkpoint under root (not verified), or None."""
    sealed = complete_checkpoints(root)
    return sealed[-1][1] if sealed else None


def last_sealed_note(root: Path) -> str:
    """Where a stopped run resumes from, for its message: the newest sealed checkpoint, or that there is none yet."""
    path = last_sealed(root)
    return f"the last sealed checkpoint is {path}" if path else "no checkpoint is sealed yet"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(root: Path, step: int) -> Path:
    """The folder a checkpoint is written into before it is sealed."""
    return root / f".step-{step}.partial"


def write_tensors(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """<folder>/<name>.safetensors, fsynced."""
    path = folder / f"{name}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    _fsync(path)


def write_json(folder: Path, name: str, value: dict) -> None:
    """<folder>/<name>.json, fsynced."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(value, indent=2))
    _fsync(path)


def seal(staging: Path, root: Path, step: int, keep_last: int) -> Path:
    """Write the manifest, rename the staged folder to step-N, then drop checkpoints beyond keep_last."""
    hashes = {p.name: sha256_of(p) for p in sorted(staging.iterdir())}
    write_json(staging, COMPLETE_MARKER, {"step": step, "sha256": hashes})
    (staging / f"{COMPLETE_MARKER}.json").rename(staging / COMPLETE_MARKER)
    _fsync(staging)
    final = root / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    _fsync(root)
    for _, old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def verify(path: Path) -> dict:
    """The manifest of a sealed checkpoint, after checking every file against its sha256."""
    if not path.is_dir():
        raise CorruptCheckpoint(f"{path} does not exist")
    try:
        manifest = json.loads((path / COMPLETE_MARKER).read_text())
        hashes = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(f"{path}: unreadable {COMPLETE_MARKER} manifest ({err})") from None
    for name, expected in hashes.items():
        file = path / name
        if not file.is_file() or sha256_of(file) != expected:
            raise CorruptCheckpoint(f"{path}: {name} is missing or does not match its sha256 (truncated or altered)")
    return manifest


def _load_bytes(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(path.read_bytes())
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for a short or garbled file)
        raise CorruptCheckpoint(f"{path} cannot be read: {err}") from None


def load_checkpoint(path: Path, check_hashes: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Tensors (by file stem) and state.json of a sealed checkpoint; check_hashes=False when just verified."""
    if not (path / COMPLETE_MARKER).is_file():
        raise CorruptCheckpoint(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} manifest)")
    if check_hashes:
        verify(path)
    # Read into memory, not mmap: a file truncated while it is read (a reloading server beside a damaged checkpoint)
    # then fails with an error instead of SIGBUS killing the process.
    tensors = {p.stem: _load_bytes(p) for p in path.glob("*.safetensors")}
    return tensors, json.loads((path / "state.json").read_text())


def latest_loadable(root: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt ones are skipped with a warning."""
    for step, path in reversed(complete_checkpoints(root)):
        try:
            verify(path)
            return path
        except CorruptCheckpoint as err:
            warnings.warn(f"skipping checkpoint step-{step}: {err}", stacklevel=2)
    return None


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and a json-able rest."""
    tensors, per_param = {}, {}
    for param_id, param_state in state_dict["state"].items():
        per_param[str(param_id)] = {}
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value
            else:
                per_param[str(param_id)][key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": per_param}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of flatten_optimizer_state."""
    state: dict[int, dict] = {int(pid): dict(values) for pid, values in rest["scalars"].items()}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}
