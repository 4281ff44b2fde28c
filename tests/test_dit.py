"""The DiT adapter (teachers/dit.py) on a tiny random DiTTransformer2DModel + VAE: diffusers' DDIM step, guidance with
the null label, the student copy, the stock DiTPipeline running an exported student, and a tiny distillation run."""
import json

import pytest
import torch
from conftest import compose_config, tiny_dit_denoiser
from diffusers import DDIMScheduler, DiTPipeline

from distill.config import validate
from distill.generator import StudentGenerator, trainable_copy
from distill.loop import run
from eval.samplers import one_step
from teachers.errors import ConfigError
from teachers.guidance import GuidedDenoiser
import teachers


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "pipeline"
    tiny_dit_denoiser().save_pretrained(path)
    return path


def test_dit_matches_diffusers_ddim_step_and_drops_the_learned_sigma():
    denoiser = tiny_dit_denoiser()
    scheduler = DDIMScheduler.from_config(denoiser.scheduler.config, set_alpha_to_one=False, clip_sample=False,
                                          timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(4)
    t = int(scheduler.timesteps[1])
    sigma = denoiser.sigmas[t]
    labels = torch.tensor([3, 7])
    x_vp = torch.randn(2, *denoiser.shape)
    with torch.no_grad():
        x0 = denoiser(x_vp * (1 + sigma**2).sqrt(), sigma, labels)
        out = denoiser.transformer(x_vp, torch.tensor([t, t]), class_labels=labels).sample
    assert out.shape[1] == 8
    step = scheduler.step(out[:, :4], t, x_vp, eta=0.0)
    torch.testing.assert_close(x0, step.pred_original_sample, atol=1e-4, rtol=1e-4)


def test_dit_guidance_uses_the_null_label_and_the_student_starts_as_the_teacher():
    teacher = tiny_dit_denoiser()
    assert teacher.num_classes == teacher.null_class == 10
    x, sigma, labels = torch.randn(2, *teacher.shape), torch.tensor([2.0, 0.4]), torch.tensor([1, 2])
    with torch.no_grad():
        guided = GuidedDenoiser(teacher, 1.5)(x, sigma, labels)
        cond, uncond = teacher(x, sigma, labels), teacher(x, sigma, torch.tensor([10, 10]))
        torch.testing.assert_close(guided, uncond + 1.5 * (cond - uncond), atol=1e-5, rtol=1e-5)
        student = StudentGenerator(trainable_copy(teacher))
        z = torch.randn(2, *teacher.shape)
        torch.testing.assert_close(student(z, labels), teacher(z * (1 + teacher.sigma_max**2) ** 0.5, teacher.sigma_max, labels))
    assert student.denoiser.vae is teacher.vae


def test_an_exported_dit_student_runs_in_stock_diffusers(tmp_path):
    student = tiny_dit_denoiser(seed=4)
    scheduler, _, exact = student.export_scheduler([student.sigma_max])
    assert exact
    student.save_pretrained(tmp_path / "student", scheduler=scheduler)
    pipe = DiTPipeline.from_pretrained(tmp_path / "student")
    stock = pipe([3, 5], guidance_scale=1.0, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    z = torch.randn((2, *student.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = (student.decode(one_step(student, z, torch.tensor([student.sigma_max, 0.0]), torch.tensor([3, 5]))) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(torch.from_numpy(stock).permute(0, 3, 1, 2), ours, atol=1e-3, rtol=0)


@pytest.mark.slow  # CI time (issue 34 added flow-teacher tests); make test-slow runs it
def test_teacher_dit_validates_and_a_tiny_run_writes_its_outputs(dit_folder, tmp_path):
    overrides = ["experiment=mnist_dmd2", "teacher=dit", f"teacher.path={dit_folder}", "data.pad=2", "eval.center_crop=28",
                 "debug=cpu_tiny_sd", "eval.second_classifier=null", "eval.num_samples=32", "eval.quality_figures=false",
                 "eval.cross_check=false", f"eval.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}"]
    metrics = run(compose_config("train", overrides))
    assert metrics.keys() == {"teacher_heun_nfe3", "student_nfe1"} and metrics["student_nfe1"]["fid"] >= 0
    assert json.loads((tmp_path / "run" / "student" / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    assert teachers.load(tmp_path / "run" / "student").num_classes == 10


def test_teacher_dit_needs_a_dit_folder(dit_folder, tmp_path):
    with pytest.raises(ConfigError, match="is a dit teacher .DiTPipeline., not one teacher=unet takes; use teacher=dit"):
        validate(compose_config("train", ["experiment=mnist", f"teacher.path={dit_folder}", "run_dir=x"]))
    with pytest.raises(ConfigError, match="teacher=dit needs teacher.path"):
        validate(compose_config("train", ["experiment=mnist", "teacher=dit", "teacher.path=null", "run_dir=x"]))


def test_the_dit_students_card_snippet_runs_verbatim(dit_folder, tmp_path, monkeypatch):
    from distill.card import CARD_FILE, snippet_from_card
    from distill.export import export_student, student_record

    student = teachers.load(dit_folder)
    export_student(student, None, tmp_path / "student", student_record([student.sigma_max]))
    card = (tmp_path / "student" / CARD_FILE).read_text()
    assert "pipeline_tag: image-generation" in card and "DiTPipeline" in card
    monkeypatch.chdir(tmp_path / "student")
    scope = {}
    exec(snippet_from_card(card), scope)  # noqa: S102  (the card's own code, as a user would paste it)
    assert scope["images"].shape == (4, 32, 32, 1)
