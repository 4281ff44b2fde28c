"""Complete, atomically written training state: checkpoints/step-N/ (safetensors + json)."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COMPLETE_MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step-(\d+)$")


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under root, oldest first; partial ones are ignored."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return sorted((step, p) for step, p in found if (p / COMPLETE_MARKER).is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict, keep_last: int) -> Path:
    """Write <root>/step-N: one safetensors file per entry of tensors, torch objects via torch.save, state.json.

    Written into a temporary folder, fsynced, marked complete, then renamed into place; only after that
    are older checkpoints beyond keep_last removed.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    for name, tensor_dict in tensors.items():
        flat = {k: v.detach().cpu().contiguous() for k, v in tensor_dict.items()}
        _write_synced(tmp / f"{name}.safetensors", lambda p, flat=flat: save_file(flat, str(p)))
    _write_synced(tmp / "state.json", lambda p: p.write_text(json.dumps(state, indent=2)))
    _write_synced(tmp / COMPLETE_MARKER, lambda p: p.write_text(f"step {step}\n"))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    for _, old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Tensors (by file stem) and state.json of a complete checkpoint."""
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    tensors = {p.stem: load_file(str(p)) for p in path.glob("*.safetensors")}
    return tensors, json.loads((path / "state.json").read_text())


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
