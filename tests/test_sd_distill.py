"""The latent text-to-image path end to end on a tiny random Stable Diffusion: a DMD2 run writes every output, the
student is a pipeline stock diffusers runs; bad text-to-image input stops before any work."""
import json
import shutil

import numpy as np
import pytest
from conftest import compose_config
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image

from distill.config import validate
from distill.loop import run
from teachers.errors import ConfigError


def sd_overrides(teacher, run_dir, cache_dir, *extra):
    return ["experiment=mnist_sd_dmd2", "debug=cpu_tiny_sd", f"teacher.path={teacher}", f"run_dir={run_dir}",
            f"eval.cache_dir={cache_dir}", "eval.second_classifier=null", *extra]


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory, tiny_sd_folder):
    run_dir, cache = tmp_path_factory.mktemp("sd_smoke"), tmp_path_factory.mktemp("cache")
    return run_dir, cache, run(compose_config("train", sd_overrides(tiny_sd_folder, run_dir, cache)))


def test_tiny_sd_dmd2_run_writes_every_output(sd_run):
    run_dir, cache, metrics = sd_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk.keys() == metrics.keys() == {"teacher_heun_nfe3", "student_nfe1"}
    for label, entry in on_disk.items():
        assert np.isfinite(entry["fid"]) and 0 <= entry["prompt_accuracy"] <= 1 and entry["seconds_per_sample"] > 0, label
        pngs = sorted((run_dir / "samples" / label).glob("*.png"))
        assert len(pngs) == 64 and Image.open(pngs[0]).size == (28, 28)  # decoded 32x32, center-cropped to the digits
    assert on_disk["teacher_heun_nfe3"]["fid_vs_teacher"] == 0.0 < on_disk["student_nfe1"]["fid_vs_teacher"]
    assert (run_dir / "grids" / "step-000002.png").is_file() and (run_dir / "grids" / "teacher_student.png").is_file()
    assert (run_dir / "checkpoints" / "step-2" / "COMPLETE").is_file()
    assert list((cache / "text_embeddings").glob("*/embeddings.safetensors"))  # prompt embeddings cached on disk
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert any("loss/gan_generator" in entry for entry in log)  # the GAN's real side came through the VAE


def test_exported_text_student_is_a_stock_pipeline_with_a_card(sd_run):
    run_dir, _, _ = sd_run
    student = run_dir / "student"
    record = json.loads((student / "student.json").read_text())
    assert record["guidance_scale"] == 2.0 and record["prompts"][0] == "a handwritten zero"
    pipe = StableDiffusionPipeline.from_pretrained(student)
    assert isinstance(pipe.scheduler, LCMScheduler)
    images = pipe(record["prompts"][:2], num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert images.shape == (2, 32, 32, 1)
    card = (student / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "StableDiffusionPipeline" in card
    assert (student / "samples.png").is_file()


@pytest.mark.parametrize("overrides, message", [
    (["experiment=mnist_sd", "data=mnist"], "teacher=sd is text-to-image but data=mnist has no prompts"),
    (["experiment=mnist", "data=mnist_sd"], "teacher=unet takes class labels, not prompts"),
    (["experiment=mnist_sd", "teacher.path=zoo:mnist_cond"], "is a unet teacher (DDPMPipeline), not one teacher=sd takes"),
    (["experiment=mnist_sd", "teacher.dtype=float64"], "teacher.dtype=float64; allowed: float32, bfloat16, float16"),
    (["experiment=mnist_sd", "teacher.path=null"], "teacher=sd needs teacher.path"),
])
def test_text_to_image_options_on_the_wrong_teacher_stop_before_work(tmp_path, tiny_sd_folder, overrides, message):
    cfg = compose_config("train", [f"teacher.path={tiny_sd_folder}", *overrides, f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_a_class_teacher_given_an_sd_folder_is_told_to_use_teacher_sd(tmp_path, tiny_sd_folder):
    cfg = compose_config("train", ["experiment=mnist", f"teacher.path={tiny_sd_folder}", f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="is a sd teacher \\(StableDiffusionPipeline\\), not one teacher=unet takes; use teacher=sd"):
        validate(cfg)


def test_a_pipeline_missing_its_vae_is_named_before_work(tmp_path, tiny_sd_folder):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd_folder, broken)
    shutil.rmtree(broken / "vae")
    cfg = compose_config("train", ["experiment=mnist_sd", f"teacher.path={broken}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="missing the pipeline component\\(s\\) vae"):
        validate(cfg)


def test_python_m_eval_judges_a_text_student_beside_its_guided_teacher(sd_run, tiny_sd_folder, tmp_path):
    from eval.run import run as evaluate

    run_dir, cache, _ = sd_run
    cfg = compose_config("eval", ["experiment=mnist_sd_dmd2", f"teacher.path={tiny_sd_folder}", f"student_path={run_dir / 'student'}",
                                  f"run_dir={tmp_path}", f"eval.cache_dir={cache}", "eval.num_samples=32", "eval.batch_size=16",
                                  "eval.teacher_samplers=[{name: euler, num_steps: 2}]", "eval.second_classifier=null",
                                  "eval.quality_figures=false", "eval.cross_check=false"])
    metrics = evaluate(cfg)
    assert metrics.keys() == {"teacher_euler_nfe2", "student_nfe1"}
    assert all(0 <= entry["prompt_accuracy"] <= 1 for entry in metrics.values())
    assert metrics["teacher_euler_nfe2"]["fid_vs_teacher"] == 0.0


def test_the_speed_bench_times_text_samplers_with_their_decode(sd_run, tiny_sd_folder):
    import torch

    from eval.bench import benchmark
    import teachers

    run_dir, _, _ = sd_run
    figures = benchmark(teachers.load(tiny_sd_folder), teachers.load(run_dir / "student"), [{"name": "heun", "num_steps": 2}],
                        batch_size=4, repeats=1, device=torch.device("cpu"), guidance_scale=2.0, prompts=["a seven", "number two"],
                        center_crop=28)
    assert figures.keys() == {"teacher_heun_nfe3", "student_nfe1"}
    assert all(entry["seconds_per_sample"] > 0 and entry["guidance_scale"] == 2.0 for entry in figures.values())
    assert figures["student_nfe1"]["student_speedup"] == 1.0
