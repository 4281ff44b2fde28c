"""Every random number generator a process uses, as tensors (for safetensors) and back."""
from __future__ import annotations

import random

import numpy as np
import torch


def rng_state() -> dict[str, torch.Tensor]:
    """torch (CPU and CUDA), numpy and python random states of this process."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of rng_state."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    pos, has_gauss = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, float(state["numpy_gauss"][0])))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if gauss != gauss else gauss))
