"""Only safetensors and tensors-only pickles load; a pickle that would run code is refused."""
import os
import pickle

import pytest
import torch

from teachers.errors import ConfigError
import teachers
from teachers.folders import PICKLE_FILE
from teachers.io import safe_torch_load, save_pretrained_atomic
from teachers.mlp import MLPDenoiser


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny():
    return MLPDenoiser(dim=2, hidden_dim=8, num_layers=1, emb_dim=4)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        safe_torch_load(evil)
    assert not marker.exists()


def test_teacher_folder_with_malicious_bin_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "teacher"
    _tiny().save_config(folder)
    (folder / PICKLE_FILE).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        teachers.load(folder)
    assert not marker.exists()


def test_tensors_only_bin_loads(tmp_path):
    model, folder = _tiny(), tmp_path / "teacher"
    model.save_config(folder)
    torch.save(model.state_dict(), folder / PICKLE_FILE)
    loaded = teachers.load(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    folder = save_pretrained_atomic(_tiny(), tmp_path / "teacher")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:30])
    with pytest.raises(ConfigError, match="cannot load the mlp model"):
        teachers.load(folder)
