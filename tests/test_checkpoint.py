"""Checkpoints are sealed or ignored, verified by hash, and round-trip every piece of state."""
import json

import pytest
import torch

from distill.checkpoint import (
    COMPLETE_MARKER,
    CorruptCheckpoint,
    complete_checkpoints,
    flatten_optimizer_state,
    latest_loadable,
    load_checkpoint,
    seal,
    staging_dir,
    unflatten_optimizer_state,
    write_json,
    write_tensors,
)
from distill.rng import rng_state, set_rng_state


def _save(root, step, value, keep_last=3):
    staging = staging_dir(root, step)
    staging.mkdir(parents=True)
    write_tensors(staging, "net", {"w": torch.full((2, 3), float(value))})
    write_json(staging, "state", {"step": step})
    return seal(staging, root, step, keep_last)


def test_round_trip(tmp_path):
    tensors, state = load_checkpoint(_save(tmp_path, 5, 1.5))
    torch.testing.assert_close(tensors["net"]["w"], torch.full((2, 3), 1.5))
    assert state == {"step": 5}
    assert set(json.loads((tmp_path / "step-5" / COMPLETE_MARKER).read_text())["sha256"]) == {"net.safetensors", "state.json"}


def test_partial_checkpoints_are_ignored(tmp_path):
    _save(tmp_path, 1, 1.0)
    staging_dir(tmp_path, 2).mkdir()  # as if killed while staging step 2
    (tmp_path / "step-3").mkdir()  # a folder without the manifest
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1]


def test_keep_last_removes_only_older_sealed_checkpoints(tmp_path):
    for step in range(1, 5):
        _save(tmp_path, step, step, keep_last=2)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 4]
    assert not any(p.name.startswith(".step") for p in tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_latest_is_skipped_and_refused_when_named(tmp_path, damage):
    _save(tmp_path, 1, 1.0)
    latest = _save(tmp_path, 2, 2.0)
    target = latest / "net.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:40])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (latest / COMPLETE_MARKER).write_text("{not json")
    with pytest.warns(UserWarning, match="skipping checkpoint step-2"):
        assert latest_loadable(tmp_path) == tmp_path / "step-1"
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(latest)


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    fresh.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(rest))))
    assert fresh.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(fresh.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])


def test_rng_state_round_trip_replays_every_generator():
    import random

    import numpy as np

    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
