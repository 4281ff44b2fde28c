"""Learning-rate decay over the budget: the factor at known points, the budget it follows, a run that logs it."""
import json
import math

import pytest
import torch
from conftest import compose_config

from distill.checkpoint import load_checkpoint
from distill.loop import run
from distill.schedule import budget_progress, lr_factor, set_lr_factor


def test_progress_is_the_larger_share_of_steps_and_minutes():
    assert budget_progress(10, 100, 0.0, None) == 0.1
    assert budget_progress(10, 100, 30 * 60.0, 60) == 0.5  # the wall clock runs out first
    assert budget_progress(90, 100, 60.0, 60) == 0.9
    assert budget_progress(500, 100, 0.0, None) == 1.0


@pytest.mark.parametrize("schedule, at_half", [("constant", 1.0), ("cosine", 0.55), ("linear", 0.55)])
def test_lr_factor_known_answers(schedule, at_half):
    assert lr_factor(0.0, schedule, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.5, schedule, 0.1) == pytest.approx(at_half)
    assert lr_factor(1.0, schedule, 0.1) == pytest.approx(1.0 if schedule == "constant" else 0.1)
    assert lr_factor(0.25, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_set_lr_factor_scales_each_group_from_its_own_base():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": a.parameters()}, {"params": b.parameters(), "lr": 3e-3}], lr=1e-4)
    set_lr_factor(opt, 0.5)
    set_lr_factor(opt, 0.25)  # from the base, not compounded
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-5, 7.5e-4])


def test_a_run_decays_both_learning_rates_to_the_floor(tmp_path):
    overrides = ["experiment=toy_gmm", "debug=cpu_tiny", "train.plot_every=1000", "train.max_steps=4", "train.log_every=1",
                 "optim.lr_schedule=linear", "optim.min_lr_ratio=0.2", "optim.student_lr=1e-3", f"run_dir={tmp_path}"]
    run(compose_config("train", overrides))
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["lr/factor"] for row in log if "lr/factor" in row] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    _, state = load_checkpoint(tmp_path / "checkpoints" / "step-4")
    student, fake = state["student_optimizer"]["param_groups"][0], state["fake_optimizer"]["param_groups"][0]
    assert (student["lr"], student["initial_lr"]) == pytest.approx((0.4e-3, 1e-3))
    assert fake["lr"] == pytest.approx(0.4 * fake["initial_lr"])
