"""Stable Diffusion 3 through the family door (teachers/sd3.py on the rectified-flow base, teachers/flow.py) on a tiny
random SD3 without T5: its conds are stock diffusers', one Euler step of the adapter is one
FlowMatchEulerDiscreteScheduler.step, the teacher's full sampler is the stock pipeline's, the exported one-step
student is what stock StableDiffusion3Pipeline makes (and its k-step scheduler re-noises as DMD2's sampler does), the
LoRA export loads with load_lora_weights, the server's image is stock diffusers' image, and bad flow input is one
line."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_sd3_denoiser
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from omegaconf import OmegaConf

import teachers
from distill.build import build_state
from distill.config import validate
from distill.export import export_student, student_record
from distill.serve.model import PreviewModel
from distill.serve.source import StudentSource
from eval.samplers import euler, one_step, start
from teachers.base import denoising_loss_weight
from teachers.errors import ConfigError
from teachers.flow import flow_ramp, sigma_of_t, t_of_sigma
from teachers.latent import LORA_FILE
from test_export import run_card_snippet

PROMPTS = ["a handwritten seven", "the digit 1"]
INF = math.inf


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_denoiser(seed=5)


def velocity(sd3, x_t, t, cond):
    """The transformer's raw output at x_t and the scheduler's timestep 1000 t, called as the stock pipeline calls it."""
    return sd3.transformer(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=cond["prompt_embeds"],
                           pooled_projections=cond["pooled"]).sample


def test_conds_are_the_stock_pipelines_with_zeros_for_the_missing_t5(sd3):
    embeds, negative, pooled, negative_pooled = sd3.pipeline().encode_prompt(PROMPTS, None, None, device="cpu",
                                                                             do_classifier_free_guidance=True, max_sequence_length=4)
    cond = sd3.encode_condition(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, 12 + 4, 32) and cond["pooled"].shape == (2, 16)
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled"], pooled)
    null = sd3.null_condition(cond)
    torch.testing.assert_close(null["prompt_embeds"], negative)
    torch.testing.assert_close(null["pooled"], negative_pooled)
    assert cond["prompt_embeds"][:, 12:].abs().max() == 0  # no T5: zeros, as the pipeline pads
    assert not torch.allclose(cond["pooled"][0], cond["pooled"][1], atol=1e-3)


def test_sigma_and_t_are_one_map_with_t_1_at_infinity():
    t = torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0], dtype=torch.float64)
    sigma = sigma_of_t(t)
    assert sigma[-1] == INF and sigma[2] == 1.0
    torch.testing.assert_close(t_of_sigma(sigma), t)
    ramp = flow_ramp(torch.tensor([0.02, 0.98]), 0.003, INF, 7.0)  # DMD's [0.02, 0.98] is t in about [0.02, 0.98]
    torch.testing.assert_close(t_of_sigma(ramp), torch.tensor([0.98, 0.0229]), atol=1e-3, rtol=0)
    # the fake score's `auto` weighting is the v-MSE: x0 error = t * v error
    s = torch.tensor([0.1, 1.0, 9.0])
    torch.testing.assert_close(denoising_loss_weight(s, 1.0, "flow") * t_of_sigma(s) ** 2, torch.ones(3))


def test_one_adapter_euler_step_is_one_flow_match_scheduler_step(sd3):
    cond = sd3.encode_condition(PROMPTS)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler.config)
    scheduler.set_timesteps(6)
    i = 2
    t, t_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
    x_t = torch.randn(2, *sd3.shape, generator=torch.Generator().manual_seed(1))
    scheduler.set_begin_index(i)
    with torch.no_grad():
        stock = scheduler.step(velocity(sd3, x_t, t.expand(2), cond), scheduler.timesteps[i], x_t, return_dict=False)[0]
        sigma, sigma_next = sigma_of_t(torch.stack([t, t_next]).double()).float()
        x = x_t * (1 + sigma)  # the EDM x of x_t
        x_next = x + (sigma_next - sigma) * (x - sd3(x, sigma, cond)) / sigma  # Euler on the PF-ODE in sigma
        ours = x_next / (1 + sigma_next)
    torch.testing.assert_close(ours, stock, atol=1e-4, rtol=1e-4)
    # the first step from t = 1 (sigma = inf): x_t is the noise itself, D = z - v, then Euler to t_1
    scheduler.set_timesteps(6)
    z = torch.randn(2, *sd3.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stock = scheduler.step(velocity(sd3, z, torch.ones(2), cond), scheduler.timesteps[0], z, return_dict=False)[0]
        x, _ = start(sd3, z, sigma_of_t(scheduler.sigmas[:2].double()).float(), cond)
    torch.testing.assert_close(x / (1 + sigma_of_t(scheduler.sigmas[1].double()).float()), stock, atol=1e-4, rtol=1e-4)


def test_the_teachers_full_sampler_is_the_stock_pipelines(sd3):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        stock = sd3.pipeline().__call__(PROMPTS, num_inference_steps=5, guidance_scale=1.0, generator=generator, max_sequence_length=4,
                                        output_type="latent").images
        z = torch.randn(2, *sd3.shape, generator=torch.Generator().manual_seed(0))
        ours = euler(sd3, z, sd3.sampling_sigmas(5), sd3.encode_condition(PROMPTS))
    torch.testing.assert_close(ours, stock, atol=1e-4, rtol=1e-4)


def test_stock_sd3_pipeline_makes_the_exported_one_step_students_images(sd3, tmp_path, monkeypatch):
    folder = export_student(sd3, None, tmp_path / "student", student_record([INF], 1.0, None, PROMPTS, family="sd3"))
    stock = run_card_snippet(folder, monkeypatch)
    assert stock.shape == (2, 32, 32, 1) and "StableDiffusion3Pipeline" in (folder / "README.md").read_text()
    z = torch.randn((2, *sd3.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = one_step(sd3, z, torch.tensor([INF, 0.0]), sd3.encode_condition(PROMPTS))
        ours = (sd3.decode(x) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(stock - ours).max() <= 1e-3
    assert teachers.load(folder, key="student").family == "sd3"


def test_the_exported_k_step_scheduler_re_noises_as_dmd2s_sampler(sd3):
    """k steps at t = 1, 0.75, 0.5: the stored scheduler, stepped with a generator as the stock loop steps it, makes the
    toolkit's multistep student's latents from the same draws (x0, then fresh noise at the next t)."""
    from eval.samplers import multistep_student

    sigmas = [INF, 3.0, 1.0]
    scheduler, ts, exact = sd3.export_scheduler(sigmas)
    assert exact and scheduler.config.stochastic_sampling and scheduler.timesteps.tolist() == [1000.0, 750.0, 500.0]
    cond = sd3.encode_condition(PROMPTS)
    generator = torch.Generator().manual_seed(4)
    z = torch.randn(2, *sd3.shape, generator=generator)
    with torch.no_grad():
        x = z
        for timestep in scheduler.timesteps:
            x = scheduler.step(velocity(sd3, x, timestep.expand(2) / 1000, cond), timestep, x, generator=generator, return_dict=False)[0]
        generator = torch.Generator().manual_seed(4)
        z = torch.randn(2, *sd3.shape, generator=generator)
        ours = multistep_student(sd3, z, torch.tensor(sigmas), cond, generator)
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_the_server_makes_stock_diffusers_image_for_a_prompt_and_seed(sd3, tmp_path):
    folder = export_student(sd3, None, tmp_path / "student", student_record([INF], 1.0, None, PROMPTS, family="sd3"))
    model = PreviewModel(StudentSource(str(folder)).load_first())
    served = model.generate([11, 12], ["a handwritten seven", ""]).astype(int)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    for i, (seed, prompt) in enumerate([(11, "a handwritten seven"), (12, "")]):
        stock = pipe(prompt, num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(seed),
                     max_sequence_length=4, output_type="np").images[0]
        assert np.abs(np.round(stock * 255).astype(int) - served[i]).max() <= 1


def test_the_lora_export_loads_into_the_teachers_stock_pipeline(sd3, tmp_path):
    sd3.save_pretrained(tmp_path / "teacher")
    lora = OmegaConf.create({"rank": 4, "alpha": 8, "targets": ["to_q", "to_k", "to_v", "to_out.0"], "fake_score": False})
    state = build_state(sd3, compose_config("train", ["run_dir=x"]).optim, 0.9, lora=lora)
    with torch.no_grad():
        for name, p in state.student.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    export_student(state.student, None, tmp_path / "student", student_record([INF], family="sd3"))
    x, cond = torch.randn(2, *sd3.shape), sd3.encode_condition(PROMPTS)
    with torch.no_grad():
        trained, plain = velocity(state.student, x, torch.tensor([0.9, 0.4]), cond), velocity(sd3, x, torch.tensor([0.9, 0.4]), cond)
        pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "teacher", text_encoder_3=None, tokenizer_3=None)
        pipe.load_lora_weights(tmp_path / "student", weight_name=LORA_FILE)
        loaded = pipe.transformer(hidden_states=x, timestep=torch.tensor([900.0, 400.0]), encoder_hidden_states=cond["prompt_embeds"],
                                  pooled_projections=cond["pooled"]).sample
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3)


def flow_cfg(folder, tmp_path, *extra):
    return compose_config("train", ["experiment=mnist_sd_dmd2", f"teacher.path={folder}", f"run_dir={tmp_path / 'run'}", *extra])


def test_a_flow_teachers_range_is_its_own_and_null_fills_to_infinity(tiny_sd3_folder, tmp_path):
    cfg = flow_cfg(tiny_sd3_folder, tmp_path, "loss.sigma.min=null", "loss.sigma.max=null")
    validate(cfg)
    assert cfg.teacher.family == "sd3" and cfg.loss.sigma.max == INF
    assert cfg.loss.sigma.min == pytest.approx(float(sigma_of_t(torch.tensor(3 * 0.001 / (1 + 2 * 0.001), dtype=torch.float64))), rel=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": 1000})),
     "scheduler DDPMScheduler is not a flow-matching scheduler; a Stable Diffusion 3 teacher was trained with rectified flow"),
    (lambda f: __import__("shutil").rmtree(f / "text_encoder_2"),
     "is missing the pipeline component\\(s\\) text_encoder_2; a Stable Diffusion 3 folder has"),
])
def test_a_broken_sd3_folder_is_named_before_work(tiny_sd3_folder, tmp_path, edit, message):
    import shutil

    broken = tmp_path / "sd3"
    shutil.copytree(tiny_sd3_folder, broken)
    edit(broken)
    with pytest.raises(ConfigError, match=message):
        validate(flow_cfg(broken, tmp_path))


def test_a_sigma_range_outside_the_flow_teachers_is_refused(tiny_sd3_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"loss.sigma.min=0.0001 is outside the teacher's sigma range \[0.00300"):
        validate(flow_cfg(tiny_sd3_folder, tmp_path, "loss.sigma.min=0.0001"))


def test_the_mnist_sd3_preset_runs_a_few_steps_on_a_tiny_sd3_and_exports_a_stock_pipeline(tiny_sd3_folder, tmp_path):
    """experiment=mnist_sd3_dmd2 under debug=cpu_tiny_sd (CI): DMD2 with the GAN on the middle joint block, the flow
    teacher's own t range, then the exported student is a StableDiffusion3Pipeline with its one-step scheduler."""
    from distill.loop import run

    cfg = compose_config("train", ["experiment=mnist_sd3_dmd2", "debug=cpu_tiny_sd", f"teacher.path={tiny_sd3_folder}",
                                   f"run_dir={tmp_path / 'run'}", f"eval.cache_dir={tmp_path / 'cache'}", "eval.second_classifier=null",
                                   "eval.num_samples=32", "eval.quality_figures=false", "eval.cross_check=false"])
    metrics = run(cfg)
    assert set(metrics) == {"teacher_heun_nfe2", "student_nfe1"} and cfg.teacher.family == "sd3"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("loss/gan_generator" in entry for entry in log) and all(math.isfinite(e.get("loss/dmd", 0.0)) for e in log)
    student = tmp_path / "run" / "student"
    assert json.loads((student / "student.json").read_text())["sigmas"] == [INF]
    pipe = StableDiffusion3Pipeline.from_pretrained(student, text_encoder_3=None, tokenizer_3=None)
    assert pipe.scheduler.config.shift == 1.0 and pipe.scheduler.config.stochastic_sampling is False


def test_the_miniature_sd3_trainer_writes_a_folder_stock_diffusers_samples(tmp_path):
    """teacher=sd3_mini for two steps: an SD3 folder without T5 whose VAE carries SD3's shift_factor, loaded by the
    family door and sampled by the stock pipeline with its recorded max_sequence_length."""
    from teachers.fit import run as train_teacher

    folder = train_teacher(compose_config("teacher_train", ["data=mnist", "teacher=sd3_mini", "train.max_steps=2", f"run_dir={tmp_path}"]))
    report = json.loads((folder / "train_report.json").read_text())
    teacher = teachers.load(folder)
    assert teacher.family == "sd3" and teacher.vae.config.shift_factor == report["shift_factor"] != 0
    assert json.loads((folder / "distill.json").read_text())["max_sequence_length"] == 0
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    images = pipe(["a handwritten seven"], num_inference_steps=2, guidance_scale=2.0, max_sequence_length=0, output_type="np").images
    assert images.shape == (1, 32, 32, 1) and np.isfinite(images).all()
