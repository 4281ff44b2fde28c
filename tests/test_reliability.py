"""A crash costs minutes, never the run: NaN guard, SIGTERM, and SIGKILL + resume (bitwise)."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill.terms
from conftest import compose_config
from distill.checkpoint import complete_checkpoints, verify
from distill.loop import run
from distill.state import Counters, save_training_state
from teachers.errors import TrainingStopped

REPO = Path(__file__).resolve().parent.parent
TINY = ["experiment=toy_gmm", "debug=cpu_tiny", "deterministic=true", "train.log_every=1", "train.plot_every=1000"]


def _nan_on_calls(monkeypatch, module, name, calls):
    """Make module.<name> (a loss term's call) return NaN on the given (1-based) calls."""
    real, count = getattr(module, name), {"n": 0}

    def patched(*args, **kwargs):
        count["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if count["n"] in calls else out

    monkeypatch.setattr(module, name, patched)


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_injected_nans_are_skipped_counted_and_survived(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, distill.terms.DMD, "__call__", {2, 5, 6})
    _nan_on_calls(monkeypatch, distill.terms.Denoising, "__call__", {3, 11})
    metrics = run(compose_config("train", [*TINY, "train.max_steps=8", f"run_dir={tmp_path}"]))
    last = _log(tmp_path)[-1]
    assert last["skipped_total/student"] == 3 and last["skipped_total/fake_score"] == 2
    assert [r["step"] for r in _log(tmp_path) if r["skipped/student"]] == [2, 5, 6]
    student = load_file(str(tmp_path / "student" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in student.values())
    assert metrics["student_nfe1"]["nfe"] == 1


def test_consecutive_nans_stop_the_run_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, distill.terms.DMD, "__call__", set(range(4, 100)))
    cfg = compose_config("train", [*TINY, "train.max_steps=20", "train.keep_last=20", "train.max_consecutive_skips=3", f"run_dir={tmp_path}"])
    with pytest.raises(TrainingStopped, match="3 consecutive non-finite updates of the student") as stopped:
        run(cfg)
    assert stopped.value.exit_code == 3
    steps = [step for step, _ in complete_checkpoints(tmp_path / "checkpoints")]
    assert steps == [1, 2, 3, 4, 5]  # the skipped steps keep good weights; step 6 stops before saving
    assert "step-5" in str(stopped.value)
    for _, path in complete_checkpoints(tmp_path / "checkpoints"):
        verify(path)
        assert all(torch.isfinite(t).all() for t in load_file(str(path / "student.safetensors")).values())


def test_non_finite_weights_are_never_saved(tmp_path):
    from accelerate import Accelerator

    from distill.build import build_state
    from teachers.mlp import MLPDenoiser

    state = build_state(MLPDenoiser(dim=2, hidden_dim=8, num_layers=1, emb_dim=4), compose_config("train", ["run_dir=x"]).optim, 0.9)
    with torch.no_grad():
        next(state.student.parameters())[0] = float("nan")
    with pytest.raises(TrainingStopped, match="non-finite weights at step 7"):
        save_training_state(Accelerator(cpu=True), state, Counters(step=7), tmp_path, keep_last=2)
    assert not any(tmp_path.iterdir())


def _distill(run_dir, *overrides):
    cmd = [sys.executable, "-m", "distill", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, run_dir, step, timeout=240):
    deadline = time.monotonic() + timeout
    log = run_dir / "train_log.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines and lines[-1].endswith("}") and json.loads(lines[-1])["step"] >= step:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run never logged step {step} (exit {proc.poll()})")


def _by_step(run_dir):
    """Log records per step, less the wall clock (time/*), which no replay repeats."""
    records = {}
    for record in _log(run_dir):
        record = {k: v for k, v in record.items() if not k.startswith("time/")}
        records.setdefault(record["step"], []).append(record)
    return records


STEPS = ["train.max_steps=24", "train.checkpoint_every=3", "train.keep_last=1"]
STATE_FILES = ["student", "fake_score", "ema", "student_optimizer", "fake_optimizer"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    proc = _distill(run_dir, *STEPS)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return run_dir


# One kill point in CI; two more under `make test-slow` (each is a killed and a resumed process, about 45 s: CI's
# 15 minutes hold one).
@pytest.mark.parametrize("seed", [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2))])
def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(reference, tmp_path, seed):
    kill_step = random.Random(seed).randint(2, 21)
    proc = _distill(tmp_path, *STEPS)
    _wait_for_step(proc, tmp_path, kill_step)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = _distill(tmp_path, *STEPS)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    ref_log, log = _by_step(reference), _by_step(tmp_path)
    assert sorted(log) == sorted(ref_log) == list(range(1, 25))
    for step, records in log.items():  # replayed steps repeat the reference exactly
        assert all(r == ref_log[step][0] for r in records), step
    for name in STATE_FILES:
        a = (reference / "checkpoints" / "step-24" / f"{name}.safetensors").read_bytes()
        assert a == (tmp_path / "checkpoints" / "step-24" / f"{name}.safetensors").read_bytes(), name


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resumes(tmp_path):
    proc = _distill(tmp_path, "train.max_steps=100000", "train.checkpoint_every=1000")
    _wait_for_step(proc, tmp_path, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = proc.stderr.read().strip().splitlines()
    assert err[-1].startswith("stopped: SIGTERM at step ") and "Traceback" not in "\n".join(err)
    (step, path), = complete_checkpoints(tmp_path / "checkpoints")
    verify(path)
    assert f"saved {path}" in err[-1]
    resumed = _distill(tmp_path, f"train.max_steps={step + 2}", "train.checkpoint_every=1000")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert [r["step"] for r in _log(tmp_path)][-2:] == [step + 1, step + 2]


def test_time_budget_stops_saves_and_evaluates_and_counts_over_resumes(tmp_path):
    budget = ["train.max_steps=100000", "train.checkpoint_every=1000", "train.max_minutes=0.0001", f"run_dir={tmp_path}"]
    metrics = run(compose_config("train", [*TINY, *budget]))  # one step outlasts 6 ms
    assert "student_nfe1" in metrics
    (step, path), = complete_checkpoints(tmp_path / "checkpoints")
    assert step >= 1 and _log(tmp_path)[-1]["step"] == step
    spent = json.loads((path / "state.json").read_text())["counters"]["train_seconds"]
    assert spent >= 0.006 and _log(tmp_path)[-1]["time/train_minutes"] == pytest.approx(spent / 60)
    run(compose_config("train", [*TINY, *budget]))  # resumed with the budget spent: no further step
    assert [s for s, _ in complete_checkpoints(tmp_path / "checkpoints")] == [step]
