"""The exported student runs in stock diffusers and makes the toolkit's own image; re-export, atomicity, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_unet_denoiser
from diffusers import DDPMPipeline, LCMScheduler

from distill.card import snippet_from_card, student_images
from distill.export import export_student, hub_files, main as export_main, student_record
from distill.loop import run
import teachers
from teachers.io import sha256_of


def toolkit_images(student, sigmas, labels=None, batch: int = 4) -> np.ndarray:
    """The toolkit's own sampler on the noise the card's snippet draws (z, then each step's noise, one generator)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn((batch if labels is None else len(labels), *student.shape), generator=generator)
    return student_images(student, z, sigmas, labels, generator).permute(0, 2, 3, 1).numpy()


def run_card_snippet(folder, monkeypatch) -> np.ndarray:
    """The model card's python block, verbatim, run in the folder; its `images`."""
    monkeypatch.chdir(folder)
    namespace = {}
    exec(snippet_from_card((folder / "README.md").read_text()), namespace)  # noqa: S102  (our own card)
    return namespace["images"]


def trailing_sigmas(denoiser, k: int) -> list[float]:
    """The teacher-table sigmas at DMD2's trailing timesteps (999, 749, 499, 249 for k = 4)."""
    return [float(denoiser.sigmas[t]) for t in range(999, 0, -1000 // k)][:k]


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_a_stock_ddpm_pipeline_makes_the_students_own_image(tmp_path, monkeypatch, k, prediction_type):
    student = tiny_unet_denoiser(prediction_type)
    sigmas = trailing_sigmas(student, k)
    folder = export_student(student, None, tmp_path / "student", student_record(sigmas))
    pipe = DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.original_inference_steps == k
    stock = pipe(batch_size=4, num_inference_steps=k, generator=torch.Generator().manual_seed(0), output_type="np").images
    mine = toolkit_images(student, sigmas)
    assert np.abs(stock - mine).max() <= 1e-3 and mine.std() > 0.01
    assert np.abs(run_card_snippet(folder, monkeypatch) - mine).max() <= 1e-3  # the card's snippet is that call
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(num_inference_steps=1000)  # the default 1000-step call is refused, not run


def test_a_k_step_export_keeps_its_timesteps(tmp_path):
    student = tiny_unet_denoiser()
    folder = export_student(student, None, tmp_path / "student", student_record(trailing_sigmas(student, 4)))
    scheduler = LCMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert json.loads((folder / "student.json").read_text())["sigmas"] == pytest.approx(trailing_sigmas(student, 4))
    assert "timesteps [999.0, 749.0, 499.0, 249.0]" in (folder / "README.md").read_text()


def test_a_class_conditional_students_card_snippet_is_exact(tmp_path, monkeypatch):
    student = tiny_unet_denoiser(num_classes=5)
    sigmas = trailing_sigmas(student, 2)
    folder = export_student(student, None, tmp_path / "student", student_record(sigmas))
    card = (folder / "README.md").read_text()
    assert "passes no class labels" in card and "class_labels=labels" in card
    mine = toolkit_images(student, sigmas, torch.tensor([0, 1, 2, 3]))
    assert np.abs(run_card_snippet(folder, monkeypatch) - mine).max() <= 1e-3


def test_a_student_between_the_tables_timesteps_says_so_and_its_snippet_is_exact(tmp_path, monkeypatch):
    student = tiny_unet_denoiser()
    sigmas = [80.0, 5.0, 1.5, 0.5]  # configs/student/four_step.yaml: fractional timesteps
    folder = export_student(student, None, tmp_path / "student", student_record(sigmas))
    card = (folder / "README.md").read_text()
    assert "fall between the integers" in card and "multistep_student" in card
    assert np.abs(run_card_snippet(folder, monkeypatch) - toolkit_images(student, sigmas)).max() <= 1e-3


def test_the_shipped_student_reexported_runs_from_its_card(tmp_path, monkeypatch):
    shipped = teachers.load("teachers/zoo/mnist_cond_student")
    record = json.loads(open("teachers/zoo/mnist_cond_student/student.json").read())
    folder = export_student(shipped, None, tmp_path / "student", record)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\npipeline_tag: unconditional-image-generation\nbase_model: zoo:mnist_cond\nlicense: apache-2.0")
    labels = torch.tensor([0, 1, 2, 3])
    mine = toolkit_images(shipped, record["sigmas"], labels)
    diff = np.abs(run_card_snippet(folder, monkeypatch) - mine).max()
    print(f"shipped MNIST student: max |stock - toolkit| = {diff:.2e}")
    assert diff <= 1e-3
    assert (folder / "samples.png").is_file() and teachers.load(folder).sigma_max == pytest.approx(shipped.sigma_max)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step tiny-UNet distillation on sklearn digits with a checkpoint at each step."""
    run_dir, cache = tmp_path_factory.mktemp("export_run"), tmp_path_factory.mktemp("cache")
    overrides = ["experiment=mnist", "data=digits", "debug=cpu_tiny_image", f"run_dir={run_dir}", f"eval.cache_dir={cache}",
                 "train.checkpoint_every=1", "train.keep_last=5", "eval.num_samples=32", "eval.second_classifier=null"]
    run(compose_config("train", overrides))
    return run_dir


def unet_weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_the_runs_student_has_a_card_with_its_figures_and_a_reexport_equals_it(tiny_run, tmp_path, capsys):
    card = (tiny_run / "student" / "README.md").read_text()
    assert "| student_nfe1 | 1 |" in card and "train_config.yaml" in card and (tiny_run / "student" / "train_config.yaml").is_file()
    out = export_main([str(tiny_run), "--out", str(tmp_path / "again")])
    assert "step-2" in capsys.readouterr().out
    exported, at_end = unet_weights(out), unet_weights(tiny_run / "student")
    assert exported.keys() == at_end.keys() and all(torch.equal(exported[k], at_end[k]) for k in at_end)  # the same stored EMA tensors, copied (a replay, no arithmetic)
    older = export_main([str(tiny_run / "checkpoints" / "step-1")])
    assert older == tiny_run / "exports" / "step-1" and any(not torch.equal(unet_weights(older)[k], at_end[k]) for k in at_end)
    raw = export_main([str(tiny_run), "--no-ema", "--out", str(tmp_path / "raw")])
    assert any(not torch.equal(unet_weights(raw)[k], at_end[k]) for k in at_end) and "raw weights" in (raw / "README.md").read_text()


def test_push_to_hub_dry_run_lists_the_files(tiny_run, tmp_path, capsys):
    out = export_main([str(tiny_run), "--out", str(tmp_path / "hub"), "--push-to-hub", "me/student", "--dry-run"])
    printed = capsys.readouterr().out
    assert "would upload to me/student" in printed
    assert {"README.md", "student.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= set(hub_files(out))


@pytest.mark.slow  # CI time (issue 34 added flow-teacher tests); make test-slow runs it
def test_a_killed_export_leaves_the_old_folder_whole(tiny_run, tmp_path):
    out = export_main([str(tiny_run), "--out", str(tmp_path / "export")])
    before = {p: sha256_of(p) for p in out.rglob("*") if p.is_file()}
    process = subprocess.Popen([sys.executable, "-m", "distill.export", str(tiny_run / "checkpoints" / "step-1"), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("export.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed while it wrote, not after it finished
    assert {p: sha256_of(p) for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("case", ["no_manifest", "no_checkpoint", "out_not_an_export", "lora", "missing"])
def test_bad_input_is_one_error_line_and_nothing_is_written(tiny_run, tmp_path, case, capsys):
    args, expected = {
        "no_manifest": ([str(tmp_path / "run" / "checkpoints" / "step-1")], "without its COMPLETE manifest"),
        "no_checkpoint": ([str(tmp_path / "run")], "without a complete checkpoint"),
        "out_not_an_export": ([str(tiny_run), "--out", str(tmp_path / "mine")], "is not an exported student"),
        "lora": ([str(tiny_run), "--lora", "--out", str(tmp_path / "lora")], "--lora: this student has full weights"),
        "missing": ([str(tmp_path / "nowhere")], "no such run directory"),
    }[case]
    (tmp_path / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    listing = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        export_main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error:") and expected in err and len(err.splitlines()) == 1
    assert sorted(p for p in tmp_path.rglob("*")) == listing  # nothing written
    if case == "out_not_an_export":  # unless asked to
        export_main([*args, "--overwrite"])
        assert (tmp_path / "mine" / "student.json").is_file() and not (tmp_path / "mine" / "notes.txt").exists()
