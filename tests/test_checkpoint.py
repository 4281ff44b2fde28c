"""Checkpoints are complete or ignored, and round-trip every piece of state."""
import torch

from distill.checkpoint import (
    COMPLETE_MARKER,
    complete_checkpoints,
    flatten_optimizer_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer_state,
)


def _tensors(value: float):
    return {"net": {"w": torch.full((2, 3), value)}}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path, 5, _tensors(1.5), {"step": 5}, keep_last=2)
    tensors, state = load_checkpoint(path)
    torch.testing.assert_close(tensors["net"]["w"], torch.full((2, 3), 1.5))
    assert state == {"step": 5}


def test_partial_checkpoints_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {"step": 1}, keep_last=3)
    save_checkpoint(tmp_path, 2, _tensors(2.0), {"step": 2}, keep_last=3)
    (tmp_path / "step-2" / COMPLETE_MARKER).unlink()  # as if killed before the marker
    (tmp_path / ".step-3-abc").mkdir()  # a temporary folder left by a crash
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1]


def test_keep_last_removes_only_older_complete_checkpoints(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, _tensors(step), {"step": step}, keep_last=2)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [3, 4]
    assert not any(p.name.startswith(".step") for p in tmp_path.iterdir())


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer_state(opt.state_dict())
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    fresh.load_state_dict(unflatten_optimizer_state(tensors, rest))
    assert fresh.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(fresh.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])
