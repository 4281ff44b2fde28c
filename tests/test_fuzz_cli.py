"""Malformed configs and files through the command-line entry points: each a clear error, never a traceback."""
import json
import pickle
import sys

import pytest

from distill.__main__ import main as distill_main
from eval.__main__ import main as eval_main
from teachers.train import main as teacher_main
from teachers.folders import PICKLE_FILE
from teachers.io import save_pretrained_atomic
from teachers.mlp import MLPDenoiser

TWO = ["data.means=[[0,0],[1,1]]", "data.stds=[0.1,0.1]"]


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Folders and files that look right and are not."""
    root = tmp_path_factory.mktemp("bad")
    tiny = MLPDenoiser(dim=2, hidden_dim=8, num_layers=1, emb_dim=4)
    (root / "garbage_config").mkdir()
    (root / "garbage_config" / "config.json").write_text("{this is not json")
    (root / "garbage_config" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    truncated = save_pretrained_atomic(tiny, root / "truncated")
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    tiny.save_config(root / "pickled")
    (root / "pickled" / PICKLE_FILE).write_bytes(pickle.dumps(Payload()))
    save_pretrained_atomic(MLPDenoiser(dim=16, hidden_dim=8, num_layers=1, emb_dim=4), root / "dim16")
    (root / "ckpt" / "step-3").mkdir(parents=True)
    (root / "ckpt" / "step-3" / "COMPLETE").write_text(json.dumps({"step": 3, "sha256": {"student.safetensors": "0" * 64}}))
    (root / "ckpt" / "step-4").mkdir()
    return root


# (entry, overrides); {bad} is replaced by the bad_files folder.
CASES = [
    ("distill", ["data.weights=[0.5,0.6]", *TWO]),
    ("distill", ["data.weights=[1.5,-0.5]", *TWO]),
    ("distill", ["data.means=[[0,0],[1,1,1]]", "data.stds=[0.1,0.1]", "data.weights=[0.5,0.5]"]),
    ("distill", ["data.stds=[0.1,-0.2]", "data.means=[[0,0],[1,1]]", "data.weights=[0.5,0.5]"]),
    ("distill", ["data.stds=[0.1,0]", "data.means=[[0,0],[1,1]]", "data.weights=[0.5,0.5]"]),
    ("distill", ["data.means=5"]),
    ("distill", ["data.means=[[0,a],[1,1]]", "data.stds=[0.1,0.1]", "data.weights=[0.5,0.5]"]),
    ("distill", ["data.stds=[0.1]", *TWO[:1], "data.weights=[0.5,0.5]"]),
    ("distill", ["data.means=[]", "data.stds=[]", "data.weights=[]"]),
    ("distill", ["data.weights=abc"]),
    ("distill", ["experiment=nope"]),
    ("distill", ["loss=nope"]),
    ("distill", ["teacher.path=/nonexistent/teacher"]),
    ("distill", ["teacher.path={bad}/garbage_config"]),
    ("distill", ["teacher.path={bad}/truncated"]),
    ("distill", ["teacher.path={bad}/pickled"]),
    ("distill", ["teacher.path={bad}/dim16"]),
    ("distill", ["train.max_steps=-1"]),
    ("distill", ["train.max_steps=abc"]),
    ("distill", ["train.batch_size=0"]),
    ("distill", ["train.grad_clip=-1"]),
    ("distill", ["train.ema_decay=1.5"]),
    ("distill", ["train.reuse_student_samples=sometimes"]),
    ("distill", ["train.keep_last=0"]),
    ("distill", ["train.max_consecutive_skips=0"]),
    ("distill", ["train.resume_from=/nonexistent/step-9"]),
    ("distill", ["train.resume_from={bad}/ckpt/step-3"]),
    ("distill", ["train.resume_from={bad}/ckpt/step-4"]),
    ("distill", ["loss.student.dmd.weight=-1"]),
    ("distill", ["loss.student.dmd.weight=true"]),
    ("distill", ["train.batch_size=true"]),
    ("distill", ["loss.guidance_scale=false"]),
    ("distill", ["loss.student.dmd.weight=0", "loss.student.gan_generator.weight=0", "loss.fake.gan_discriminator.weight=0"]),
    ("distill", ["optim.lr_schedule=step"]),
    ("distill", ["optim.min_lr_ratio=2"]),
    ("distill", ["optim.betas=[0.9]"]),
    ("distill", ["optim.student_lr=0"]),
    ("distill", ["loss=dmd_regression", "loss.student.regression.distance=lpips2"]),
    ("distill", ["loss=sid", "loss.student.sid.alpha=9"]),
    ("distill", ["loss.sigma.min=100"]),
    ("distill", ["loss.sigma.t_max=2"]),
    ("distill", ["student.num_steps=2"]),
    ("distill", ["teacher.real=exactish"]),
    ("distill", ["eval.teacher_samplers=[{name:dpm,num_steps:4}]"]),
    ("distill", ["eval.num_samples=0"]),
    ("distill", ["seed=abc"]),
    ("distill", ["deterministic=maybe"]),
    ("distill", ["train.no_such_key=1"]),
    ("distill", ["data.means=[[0,0]"]),
    ("eval", ["teacher.path=null"]),
    ("eval", ["teacher.path={bad}/pickled"]),
    ("eval", ["teacher=gmm_exact", "student_path={bad}/dim16"]),
    ("teachers.train", ["data.means=[[0]]", "data.stds=[1]", "data.weights=[2]"]),
    ("teachers.train", ["teacher.fit.max_steps=abc"]),
    ("teachers.train", ["train.max_steps=0"]),
    ("teachers.train", ["teacher.net.hidden_dim=-4"]),
]
ENTRIES = {"distill": distill_main, "eval": eval_main, "teachers.train": teacher_main}  # the console scripts' own functions


@pytest.mark.parametrize(("entry", "overrides"), CASES, ids=[" ".join(o)[:60] for _, o in CASES])
def test_bad_input_gets_a_clear_error_and_no_traceback(entry, overrides, bad_files, tmp_path, monkeypatch, capsys):
    args = [o.replace("{bad}", str(bad_files)) for o in overrides]
    toy = ["experiment=toy_gmm"] if entry == "distill" and not any(a.startswith("experiment=") for a in args) else []
    monkeypatch.setattr(sys, "argv", [entry, *toy, *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exited:
        ENTRIES[entry]()
    err = capsys.readouterr().err
    assert exited.value.code not in (0, None), err
    assert "Traceback" not in err and "pwned" not in err
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and exited.value.code == 2, err  # hydra's own errors (unparsable overrides) too
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_a_bad_student_folder_is_named_as_the_student(bad_files, tmp_path, monkeypatch, capsys):
    """eval's student_path error names student_path and how to get a student, not teacher.path."""
    monkeypatch.setattr(sys, "argv", ["eval", "teacher=gmm_exact", f"student_path={tmp_path / 'no_student'}", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit):
        ENTRIES["eval"]()
    err = capsys.readouterr().err
    assert f"student_path={tmp_path / 'no_student'}: no such folder" in err and "python -m distill" in err, err
