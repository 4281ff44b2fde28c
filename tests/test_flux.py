"""Flux through the family door (teachers/flux.py on the rectified-flow base) on a tiny random guidance-distilled Flux:
its conds are stock diffusers', its full sampler is the stock pipeline's (packed latents, the dynamic shift, the
guidance embedding), the exported one-step student is what stock FluxPipeline makes, the LoRA export loads with
load_lora_weights, and CFG on a guidance-distilled teacher or a folder without T5 is one clear error."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_flux_denoiser
from diffusers import FluxPipeline
from omegaconf import OmegaConf

import teachers
import teachers.flux
from distill.build import build_state
from distill.config import validate
from distill.export import export_student, student_record
from eval.samplers import euler, one_step
from teachers.errors import ConfigError
from teachers.flux import pack, unpack
from teachers.guidance import GuidedDenoiser
from teachers.latent import LORA_FILE
from test_export import run_card_snippet

PROMPTS = ["a handwritten seven", "the digit 1"]


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_denoiser(seed=2)


def test_conds_are_the_stock_pipelines(flux):
    embeds, pooled, _ = flux.pipeline().encode_prompt(PROMPTS, None, device="cpu", max_sequence_length=16)
    cond = flux.encode_condition(PROMPTS)
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled"], pooled)
    assert not torch.allclose(cond["pooled"][0], cond["pooled"][1], atol=1e-3)


def test_packing_round_trips():
    x = torch.randn(2, 4, 8, 6)
    assert pack(x).shape == (2, 12, 16)
    torch.testing.assert_close(unpack(pack(x), 8, 6), x)


def test_the_teachers_full_sampler_is_the_stock_pipelines_at_its_guidance_embedding(flux):
    with torch.no_grad():
        stock = flux.pipeline()(PROMPTS, num_inference_steps=4, guidance_scale=3.5, height=32, width=32, max_sequence_length=16,
                                generator=torch.Generator().manual_seed(0), output_type="latent").images
        z = torch.randn(2, *flux.shape, generator=torch.Generator().manual_seed(0))
        ours = euler(flux, z, flux.sampling_sigmas(4), flux.encode_condition(PROMPTS))
    torch.testing.assert_close(ours, unpack(stock, 8, 8), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(flux.sampling_sigmas(4), flux.sampling_sigmas(4, (4, 32, 32)))  # mu reads the resolution


def test_stock_flux_pipeline_makes_the_exported_one_step_students_images(flux, tmp_path, monkeypatch):
    folder = export_student(flux, None, tmp_path / "student", student_record([math.inf], 1.0, None, PROMPTS, family="flux"))
    stock = run_card_snippet(folder, monkeypatch)
    assert stock.shape == (2, 32, 32, 1) and "FluxPipeline" in (folder / "README.md").read_text()
    z = torch.randn((2, *flux.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = one_step(flux, z, torch.tensor([math.inf, 0.0]), flux.encode_condition(PROMPTS))
        ours = (flux.decode(x) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(stock - ours).max() <= 1e-3
    loaded = teachers.load(folder, key="student")
    assert loaded.family == "flux" and loaded.guidance == 3.5 and loaded.shape == flux.shape


def test_the_lora_export_loads_into_the_teachers_stock_pipeline(flux, tmp_path):
    flux.save_pretrained(tmp_path / "teacher")
    lora = OmegaConf.create({"rank": 4, "alpha": 8, "targets": ["to_q", "to_k", "to_v"], "fake_score": False})
    state = build_state(flux, compose_config("train", ["run_dir=x"]).optim, 0.9, lora=lora)
    with torch.no_grad():
        for name, p in state.student.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    export_student(state.student, None, tmp_path / "student", student_record([math.inf], family="flux"))
    x, cond, sigma = torch.randn(2, *flux.shape), flux.encode_condition(PROMPTS), torch.tensor([2.0, 0.5])
    with torch.no_grad():
        trained, plain = state.student(x, sigma, cond), flux(x, sigma, cond)
        pipe = FluxPipeline.from_pretrained(tmp_path / "teacher")
        pipe.load_lora_weights(tmp_path / "student", weight_name=LORA_FILE)
        loaded = teachers.flux.FluxDenoiser(pipe.transformer, flux.scheduler, flux.vae, flux.text_parts(), max_sequence_length=16,
                                            sample_size=8)(x, sigma, cond)
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3)


def test_cfg_on_a_guidance_distilled_flux_is_refused(flux):
    with pytest.raises(ConfigError, match="loss.guidance_scale=2 asks for classifier-free guidance, but this Flux teacher is guidance-distilled"):
        GuidedDenoiser(flux, 2.0)
    undistilled = tiny_flux_denoiser(guidance_embeds=False)
    guided = GuidedDenoiser(undistilled, 2.0)  # an undistilled Flux takes CFG on the empty prompt
    x, cond = torch.randn(2, *flux.shape), undistilled.encode_condition(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, torch.tensor([1.0, 1.0]), cond),
                                   2 * undistilled(x, 1.0, cond) - undistilled(x, 1.0, undistilled.null_condition(cond)), atol=1e-5, rtol=1e-5)


def test_a_flux_folder_without_t5_is_named_before_work(flux, tmp_path):
    folder = tmp_path / "flux"
    flux.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"text_encoder_2": [None, None], "tokenizer_2": [None, None]}))
    shutil.rmtree(folder / "text_encoder_2")
    cfg = compose_config("train", ["experiment=mnist_sd_dmd2", "teacher=flux", f"teacher.path={folder}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="a Flux transformer reads T5 embeddings, but model_index.json has no text_encoder_2"):
        validate(cfg)


@pytest.mark.parametrize("name, family", [("flux_dmd2", "flux"), ("sd35_dmd2", "sd3")])
def test_the_flow_gpu_recipes_validate_with_their_settings(name, family, flux, tiny_sd3_folder, tmp_path):
    """The GPU recipes on tiny random components of their families: the student at t = 1, the flow teacher's own t
    range, DMD2's settings; the Flux recipe without CFG."""
    folder = tiny_sd3_folder
    if family == "flux":
        folder = tmp_path / "flux"
        flux.save_pretrained(folder)
    cfg = compose_config("train", [f"experiment={name}", f"teacher.path={folder}", "data=mnist_sd", "teacher.dtype=float32",
                                   "train.mixed_precision=no", f"run_dir={tmp_path / 'run'}", "eval.feature_extractor=domain",
                                   "eval.center_crop=28"])
    validate(cfg)
    assert cfg.teacher.family == family and cfg.student.sigmas is None and cfg.loss.sigma.max == math.inf
    assert cfg.loss.guidance_scale == (1.0 if family == "flux" else 3.5) and cfg.optim.student_lr == 5e-7
    assert cfg.train.num_fake_steps_per_student_step == 5 and cfg.eval.teacher_samplers[0].name == "euler"


def test_cfg_on_a_guidance_distilled_flux_folder_is_one_error_line_before_work(flux, tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    from distill.__main__ import main

    folder = tmp_path / "flux"
    flux.save_pretrained(folder)
    capsys.readouterr()  # the save's progress bars are not the command's
    run_dir = tmp_path / "run"
    code = run_cli(main, ["experiment=mnist_sd_dmd2", "teacher=flux", f"teacher.path={folder}", "loss.guidance_scale=2",
                          f"hydra.run.dir={run_dir}"], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: loss.guidance_scale=2 asks for classifier-free guidance")
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "student").exists()
