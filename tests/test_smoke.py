"""Two-step CPU runs write every output the run-directory contract names, and resume."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config
from distill.loop import run
from teachers.mlp import MLPDenoiser

REPO = Path(__file__).resolve().parent.parent
ENTRY_KEYS = {"nfe", "num_samples", "seconds_per_sample", "fd", "mode_recall", "mmd", "feature_extractor", "seed"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    metrics = run(compose_config("train", ["debug=cpu_tiny", f"run_dir={run_dir}"]))
    return run_dir, metrics


def test_smoke_run_writes_every_contract_output(smoke_run):
    run_dir, metrics = smoke_run
    assert (run_dir / "config.yaml").is_file()
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk.keys() == metrics.keys() == {"data", "teacher_heun_nfe7", "student_nfe1"}
    for label, entry in on_disk.items():
        assert ENTRY_KEYS <= entry.keys(), label
        samples = np.load(run_dir / "samples" / label / "samples.npz")["samples"]
        assert samples.shape == (256, 2) and np.isfinite(samples).all()
    assert on_disk["student_nfe1"]["nfe"] == 1 and on_disk["teacher_heun_nfe7"]["nfe"] == 7
    assert (run_dir / "checkpoints" / "step-2" / "COMPLETE").is_file()
    assert {p.name for p in (run_dir / "grids").glob("*.png")} >= {"step-000002.png", "data_teacher_student.png"}
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / "pairs" / "shard-00000" / "dataset_info.json").is_file()


def test_exported_student_loads_with_diffusers_and_is_the_trained_ema(smoke_run):
    run_dir, _ = smoke_run
    student = MLPDenoiser.from_pretrained(run_dir / "student")
    teacher = MLPDenoiser.from_pretrained(run_dir / "teacher")
    same = {k for k in teacher.config if not k.startswith("_")}
    assert {k: student.config[k] for k in same} == {k: teacher.config[k] for k in same}
    assert any(not torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))


def test_rerun_on_the_same_dir_resumes(smoke_run):
    run_dir, _ = smoke_run
    teacher_mtime = (run_dir / "teacher" / "diffusion_pytorch_model.safetensors").stat().st_mtime
    run(compose_config("train", ["debug=cpu_tiny", f"run_dir={run_dir}", "train.max_steps=3"]))
    state = json.loads((run_dir / "checkpoints" / "step-3" / "state.json").read_text())
    assert state["counters"]["step"] == 3 and state["counters"]["fake_updates"] == 3 * 5
    assert not (run_dir / "checkpoints" / "step-1").exists()  # keep_last=2 after step 3
    assert (run_dir / "teacher" / "diffusion_pytorch_model.safetensors").stat().st_mtime == teacher_mtime


def _cli(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_teacher_train_then_eval_cli(tmp_path, monkeypatch):
    """`python -m teachers.train` then `python -m eval`, their entry points run in this process."""
    from conftest import run_cli
    from eval.__main__ import main as eval_main
    from teachers.train import main as teacher_main

    teacher_dir = tmp_path / "t"
    assert run_cli(teacher_main, ["debug=cpu_tiny", f"hydra.run.dir={teacher_dir}"], monkeypatch) == 0
    assert (teacher_dir / "teacher" / "config.json").is_file()
    eval_dir = tmp_path / "e"
    assert run_cli(eval_main, [f"teacher.path={teacher_dir / 'teacher'}", "eval.num_samples=128",
                               "eval.teacher_samplers=[{name:euler,num_steps:3}]", f"hydra.run.dir={eval_dir}"], monkeypatch) == 0
    assert set(json.loads((eval_dir / "metrics.json").read_text())) == {"data", "teacher_euler_nfe3"}


def test_two_process_run_with_torchrun(tmp_path):
    """DDP over gloo on the CPU: one teacher, one writer, both processes in step; the evaluation sharded over both
    gives the figures one process gets for the exported student (relative 1e-6)."""
    from eval.run import run as evaluate

    torchrun, run_dir, cache = Path(sys.executable).with_name("torchrun"), tmp_path / "run", tmp_path / "cache"
    common = ["data=digits", f"eval.cache_dir={cache}", "eval.second_classifier=null", "eval.cache_teacher_samples=false"]
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "distill", "experiment=mnist", "debug=cpu_tiny_image", *common,
         f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "checkpoints" / "step-2" / "COMPLETE").is_file()
    assert done.stderr.count("teacher: 100%") == 1  # trained once, by the main process
    two = json.loads((run_dir / "metrics.json").read_text())
    one = evaluate(compose_config("eval", [
        *common, "eval=fid", "teacher=unet", f"teacher.path={run_dir / 'teacher'}", f"student_path={run_dir / 'student'}",
        "eval.num_samples=64", "eval.batch_size=32", "eval.teacher_samplers=[{name:heun,num_steps:2}]",
        "eval.classifier_fit={steps:5,batch_size:32,lr:2.0e-3}", "eval.bootstrap_resamples=20", "eval.kid_subsets=10",
        f"run_dir={tmp_path / 'one'}"]))
    assert set(one) == set(two) == {"teacher_heun_nfe3", "student_nfe1"}
    for label in one:
        assert (one[label]["num_processes"], two[label]["num_processes"]) == (1, 2)
        for name in ("fid", "fid_vs_teacher", "fid_torchmetrics", "kid", "recall", "class_tv"):
            assert two[label][name] == pytest.approx(one[label][name], rel=1e-6, abs=1e-12), (label, name)


@pytest.mark.slow  # CI time (issue 34 added flow-teacher tests); make test-slow runs it
def test_multirun_sweep_over_teachers_writes_one_run_each(tmp_path):
    done = _cli("-m", "distill", "-m", "experiment=toy_gmm", "debug=cpu_tiny", "teacher=mlp,gmm_exact", f"hydra.sweep.dir={tmp_path}", cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, real in (("0", "network"), ("1", "analytic")):
        assert f"real: {real}" in (tmp_path / job / "config.yaml").read_text()
        assert json.loads((tmp_path / job / "metrics.json").read_text())["student_nfe1"]["nfe"] == 1
