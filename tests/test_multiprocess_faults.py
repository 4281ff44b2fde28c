"""Faults of a 2-process run (torchrun, DDP over gloo): an exception on one rank stops every rank with the last sealed
checkpoint intact and named; kill -9 of the whole run, then the same command, ends bitwise equal to a run never
killed."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.checkpoint import complete_checkpoints, verify

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = ["experiment=toy_gmm", "debug=cpu_tiny", "deterministic=true", "train.log_every=1", "train.plot_every=1000",
        "eval.num_samples=64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(script: list[str], run_dir: Path, *overrides: str, env=ENV) -> subprocess.Popen:
    """A 2-process run in its own process group (so kill -9 reaches the launcher and both workers)."""
    cmd = [TORCHRUN, "--nproc_per_node", "2", *script, *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _steps_logged(run_dir: Path) -> list[int]:
    log = run_dir / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


@pytest.mark.slow  # a 2-process run, about 45 s on 2 cores; the crash report's line is tested in CI in this process (below)
def test_an_exception_on_one_rank_stops_every_rank_with_the_last_checkpoint_named(tmp_path):
    mark = tmp_path / "fault_time"
    proc = _torchrun(["tests/faults/raise_on_rank.py", "1", "5"], tmp_path / "run", "train.max_steps=8", "train.checkpoint_every=2",
                     env={**ENV, "FAULT_MARK": str(mark)})
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode != 0 and time.time() - float(mark.read_text()) < 60  # every rank gone within a minute
    sealed = complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert [step for step, _ in sealed] == [2, 4] and len(list((tmp_path / "run" / "checkpoints").iterdir())) == 2  # nothing half-written
    last = sealed[-1][1]
    verify(last)
    # The failing rank names its fault and the checkpoint to resume from; the other one meets the lost peer in a
    # collective (and says the same) or is stopped by the launcher first: a race, either is right.
    assert f"process 1 stopped at step 5 by RuntimeError: injected fault on rank 1 at step 5; the last sealed checkpoint is {last}" in err


STEPS = ["train.max_steps=12", "train.checkpoint_every=3", "train.keep_last=1"]
STATE_FILES = ["student", "fake_score", "ema", "student_optimizer", "fake_optimizer"]


@pytest.mark.slow  # three 2-process runs, about 2 minutes on 2 cores
def test_kill_9_of_a_two_process_run_then_resume_is_bitwise_identical(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _torchrun(["-m", "distill"], reference, *STEPS).wait(timeout=300) == 0
    kill_step = random.Random(0).randint(2, 10)
    proc = _torchrun(["-m", "distill"], killed, *STEPS)
    deadline = time.monotonic() + 240
    while not any(s >= kill_step for s in _steps_logged(killed)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers at once, as a lost node
    proc.wait(timeout=60)
    resumed = _torchrun(["-m", "distill"], killed, *STEPS)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert sorted(set(_steps_logged(killed))) == _steps_logged(reference) == list(range(1, 13))
    for name in STATE_FILES:
        a = (reference / "checkpoints" / "step-12" / f"{name}.safetensors").read_bytes()
        assert a == (killed / "checkpoints" / "step-12" / f"{name}.safetensors").read_bytes(), name
    assert json.loads((killed / "metrics.json").read_text())["student_nfe1"]["num_processes"] == 2


def test_a_crash_in_the_loop_names_the_process_the_step_and_the_last_sealed_checkpoint(tmp_path, capsys):
    from types import SimpleNamespace

    from distill.loop import crash_report
    from distill.state import Counters
    from teachers.errors import TrainingStopped

    checkpoints = tmp_path / "checkpoints"
    for step in (2, 4):
        (checkpoints / f"step-{step}").mkdir(parents=True)
        (checkpoints / f"step-{step}" / "COMPLETE").write_text("")
    (checkpoints / "step-6").mkdir()  # not sealed: never named
    with pytest.raises(OSError), crash_report(SimpleNamespace(process_index=1), Counters(step=6), checkpoints):
        raise OSError(28, "No space left on device")
    lines = capsys.readouterr().err.splitlines()  # (other tests' hydra runs may leave logging handlers that complain here)
    assert (f"crashed: process 1 stopped at step 7 by OSError: [Errno 28] No space left on device; the last sealed "
            f"checkpoint is {checkpoints / 'step-4'}; re-run the same command to resume") in lines
    with pytest.raises(TrainingStopped), crash_report(SimpleNamespace(process_index=0), Counters(), tmp_path / "none"):
        raise TrainingStopped("SIGTERM at step 1: saved ...", 143)  # its own message names the checkpoint
    assert "crashed:" not in capsys.readouterr().err
