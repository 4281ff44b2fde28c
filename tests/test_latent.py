"""The Stable Diffusion-family adapter (teachers/latent.py) on tiny random components of the real structure."""
import json
import logging
import shutil

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

from conftest import tiny_sd_denoiser
from distill.generator import StudentGenerator, trainable_copy
from teachers.conditions import Conditions, class_conditions, read_prompt_file
from teachers.errors import ConfigError
from teachers.guidance import GuidedDenoiser
import teachers
from teachers.folders import check_pipeline_folder


def prompts_cond(denoiser, prompts):
    return denoiser.encode_condition(prompts)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_adapter_matches_diffusers_ddim_step(prediction_type):
    """At an integer timestep the adapter's x0 is diffusers' pred_original_sample, and an Euler step of the EDM ODE
    between two table sigmas is DDIM's deterministic step (in VP units x / sqrt(1 + sigma^2))."""
    denoiser = tiny_sd_denoiser(prediction_type)
    scheduler = DDIMScheduler.from_config(denoiser.scheduler.config, prediction_type=prediction_type, set_alpha_to_one=False,
                                          clip_sample=False, timestep_spacing="leading", steps_offset=0)
    scheduler.set_timesteps(4)  # 750, 500, 250, 0
    t, t_prev = int(scheduler.timesteps[1]), int(scheduler.timesteps[2])
    sigma, sigma_prev = denoiser.sigmas[t], denoiser.sigmas[t_prev]
    cond = prompts_cond(denoiser, ["a handwritten seven", "the digit 3"])
    x_vp = torch.randn(2, *denoiser.shape, generator=torch.Generator().manual_seed(0))
    x = x_vp * (1 + sigma**2).sqrt()
    with torch.no_grad():
        x0 = denoiser(x, sigma, cond)
        out = denoiser.unet(x_vp, t, encoder_hidden_states=cond).sample
    step = scheduler.step(out, t, x_vp, eta=0.0)
    torch.testing.assert_close(x0, step.pred_original_sample, atol=1e-4, rtol=1e-4)
    x_prev = x0 + sigma_prev * (x - x0) / sigma  # Euler on dx/dsigma = (x - D) / sigma
    torch.testing.assert_close(x_prev / (1 + sigma_prev**2).sqrt(), step.prev_sample, atol=1e-4, rtol=1e-4)


def test_guidance_is_uncond_plus_scale_times_difference_with_the_empty_prompt():
    denoiser = tiny_sd_denoiser()
    cond = prompts_cond(denoiser, ["a handwritten seven", "number two"])
    x = torch.randn(2, *denoiser.shape)
    sigma = torch.tensor([3.0, 0.5])
    with torch.no_grad():
        guided = GuidedDenoiser(denoiser, 1.75)(x, sigma, cond)
        x0_cond = denoiser(x, sigma, cond)
        x0_uncond = denoiser(x, sigma, prompts_cond(denoiser, ["", ""]))
    torch.testing.assert_close(guided, x0_uncond + 1.75 * (x0_cond - x0_uncond), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x0_cond, x0_uncond)  # the prompt matters, so the check above can fail


def test_student_at_init_reproduces_teacher_x0_at_sigma_max_and_shares_the_frozen_parts():
    teacher = tiny_sd_denoiser()
    student = StudentGenerator(trainable_copy(teacher))
    cond = prompts_cond(teacher, ["a four"] * 3)
    z = torch.randn(3, *teacher.shape)
    with torch.no_grad():
        expected = teacher(z * (1 + teacher.sigma_max**2) ** 0.5, teacher.sigma_max, cond)
        torch.testing.assert_close(student(z, cond), expected)
    assert student.denoiser.vae is teacher.vae and student.denoiser.text_encoder is teacher.text_encoder
    assert student.denoiser.unet is not teacher.unet
    trained = {id(p) for p in student.parameters()}
    assert not trained & {id(p) for p in teacher.vae.parameters()}  # only the UNet trains


def test_exported_student_runs_in_stock_diffusers_as_in_the_toolkit(tmp_path):
    """A one-step student saved with the LCMScheduler set for t = 999: StableDiffusionPipeline(guidance_scale=1)
    makes the toolkit's images (its first input is sqrt(1 + sigma^2) z, so the UNet sees z as diffusers feeds it)."""
    from eval.samplers import one_step

    student = tiny_sd_denoiser(seed=3)
    scheduler, timesteps, exact = student.export_scheduler([student.sigma_max])
    assert exact and timesteps == [pytest.approx(999.0)]
    student.save_pretrained(tmp_path / "student", scheduler=scheduler)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "student")
    assert isinstance(pipe.scheduler, LCMScheduler)
    prompts = ["a handwritten seven", "the digit 1"]
    stock = pipe(prompts, num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    z = torch.randn((2, *student.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = (student.decode(one_step(student, z, torch.tensor([student.sigma_max, 0.0]), prompts_cond(student, prompts))) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(stock, ours, atol=1e-3, rtol=0)


def test_folder_round_trip_and_loader(tiny_sd_folder):
    denoiser = teachers.load(tiny_sd_folder)
    assert denoiser.text_conditional and denoiser.shape == (4, 8, 8)
    assert json.loads((tiny_sd_folder / "distill.json").read_text())["sigma_data"] == 1.0
    images = denoiser.decode(torch.randn(2, 4, 8, 8))
    assert images.shape == (2, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert denoiser.encode(images).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("component", ["vae", "text_encoder", "tokenizer"])
def test_a_missing_component_is_named(tiny_sd_folder, tmp_path, component):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd_folder, broken)
    shutil.rmtree(broken / component)
    with pytest.raises(ConfigError, match=f"missing the pipeline component\\(s\\) {component}"):
        check_pipeline_folder(broken)


@pytest.mark.parametrize("pipeline_class, message", [
    ("StableDiffusionXLPipeline", "missing the pipeline component\\(s\\) tokenizer_2, text_encoder_2; a Stable Diffusion XL folder"),
    ("StableDiffusion3Pipeline", "missing the pipeline component\\(s\\) transformer, text_encoder_2, tokenizer_2; a Stable Diffusion 3 folder"),
    ("FluxPipeline", "a Flux transformer reads T5 embeddings, but model_index.json has no text_encoder_2"),
    ("KandinskyPipeline", "KandinskyPipeline, which the toolkit does not know; it knows .*StableDiffusionPipeline .sd."),
])
def test_unsupported_families_and_unknown_schedulers_are_refused(tiny_sd_folder, tmp_path, pipeline_class, message):
    other = tmp_path / "other"
    shutil.copytree(tiny_sd_folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps(index | {"_class_name": pipeline_class}))
    with pytest.raises(ConfigError, match=message):
        teachers.load(other)
    flow = tmp_path / "flow"
    shutil.copytree(tiny_sd_folder, flow)
    config = json.loads((flow / "scheduler" / "scheduler_config.json").read_text())
    (flow / "scheduler" / "scheduler_config.json").write_text(json.dumps(config | {"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler is not one the adapter knows"):
        check_pipeline_folder(flow)
    config.pop("_class_name")  # a Stable Diffusion folder's scheduler must say which it is
    (flow / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="scheduler None is not one the adapter knows"):
        check_pipeline_folder(flow)


def test_long_prompts_are_truncated_with_one_warning(caplog):
    denoiser = tiny_sd_denoiser()
    long = " ".join(["seven"] * 40)
    with caplog.at_level(logging.WARNING):
        emb = denoiser.encode_condition([long, "a two", long])
    assert emb.shape == (3, 12, 16)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("2 of 3 prompts")


def test_prompt_files(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a seven\n\n  the digit 2 \n", encoding="utf-8")
    assert read_prompt_file(good) == ["a seven", "the digit 2"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        read_prompt_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a seven\nun caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="line 2 is not UTF-8"):
        read_prompt_file(latin)


def test_class_tables_draw_as_randint_and_text_tables_draw_rows():
    """A class table's draw is torch.randint(K) on the same stream (runs from before tables are unchanged)."""
    table = class_conditions(10)
    cond, rows = table.draw(64, generator=torch.Generator().manual_seed(5))
    # integers from the same generator call (a replay, no float arithmetic)
    assert torch.equal(cond, torch.randint(10, (64,), generator=torch.Generator().manual_seed(5))) and torch.equal(cond, rows)
    text = Conditions(torch.randn(3, 2, 4), prompts=["a", "b", "c"])
    cond, rows = text.draw(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cond, text.table[rows])  # rows gathered from the table (indexing, no arithmetic)


def tiny_clip_folder(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from teachers.mini_sd import all_captions, build_tokenizer

    tokenizer = build_tokenizer(all_captions(), 16)
    vocab = tokenizer.get_vocab()
    text = {"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 16, "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"]}
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


def test_clip_score_from_a_local_folder_and_a_clear_error_without_one(tmp_path):
    from eval.clip import clip_pair_scores, clip_score, load_clip

    folder = tiny_clip_folder(tmp_path / "clip")
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    prompts = ["a handwritten seven", "the digit 3", "number five"] * 2
    model, processor = load_clip(folder)
    pairs = clip_pair_scores(images, prompts, model, processor, batch_size=4)
    assert pairs.shape == (6,) and bool((pairs.abs() <= 100).all())
    torch.testing.assert_close(pairs, clip_pair_scores(images, prompts, model, processor, batch_size=6), atol=1e-4, rtol=0)
    assert not torch.allclose(pairs, clip_pair_scores(images, prompts[::-1], model, processor), atol=1e-3)  # the pairing matters
    assert clip_score(images, prompts, folder) == pytest.approx(float(pairs.clamp(min=0).mean()), abs=1e-4)
    with pytest.raises(ConfigError, match="config.json is missing"):
        (folder / "config.json").unlink()
        clip_score(images, prompts, folder)


def test_a_half_precision_teacher_trains_float32_copies(tiny_sd_folder):
    teacher = teachers.load(tiny_sd_folder, dtype="bfloat16")
    assert teacher.unet.dtype == torch.bfloat16 and teacher.vae.dtype == torch.bfloat16
    student = trainable_copy(teacher)
    assert student.unet.dtype == torch.float32 and student.vae is teacher.vae
    cond = teacher.encode_condition(["a seven"])
    assert cond.dtype == torch.float32
    z = torch.randn(1, *teacher.shape)
    with torch.no_grad():
        x0_teacher = teacher(z * 3.0, 3.0, cond)
        x0_student = student(z * 3.0, 3.0, cond)
    assert x0_teacher.dtype == x0_student.dtype == torch.float32
    torch.testing.assert_close(x0_student, x0_teacher, atol=0.05, rtol=0.05)  # bf16 rounding of the same weights
    assert teacher.decode(x0_teacher).dtype == torch.float32


def test_a_tiny_autoencoder_decodes_previews_and_the_copies_share_it(tmp_path):
    from diffusers import AutoencoderTiny

    teacher = tiny_sd_denoiser()
    tiny = AutoencoderTiny(in_channels=1, out_channels=1, encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                           num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4)
    latents = torch.randn(2, *teacher.shape)
    assert torch.equal(teacher.preview(latents), teacher.decode(latents))  # no tiny autoencoder: the VAE
    teacher.set_preview_vae(tiny)
    preview = teacher.preview(latents)
    assert preview.shape == (2, 1, 32, 32) and not torch.allclose(preview, teacher.decode(latents))
    assert trainable_copy(teacher).preview_vae is tiny


def test_the_coco_protocol_center_crops_and_lanczos_resizes_both_sides(tmp_path):
    """data.resolution: reference images of mixed sizes are center-cropped and Lanczos-resized at load; generated images
    go through the same uint8 crop and resize (eval.run.lanczos_resize)."""
    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from eval.run import lanczos_resize
    from teachers.data import center_crop_resize, load_images

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (30, 50), (36, 36)]):
        (tmp_path / "refs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "refs" / "a" / f"{i}.png")
    cfg = OmegaConf.create({"source": "folder", "path": str(tmp_path / "refs"), "mode": "RGB", "resolution": 16,
                            "test_fraction": 0.34, "split_seed": 0})
    images, _ = load_images(cfg, "train")
    assert images.shape[1:] == (3, 16, 16)
    with pytest.raises(ConfigError, match="mixed sizes .* data.resolution"):
        load_images(OmegaConf.merge(cfg, {"resolution": None}), "train")
    generated = torch.rand(2, 3, 40, 30) * 2 - 1
    resized = lanczos_resize(generated, 16)
    pixels = ((generated[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    expected = torch.from_numpy(np.asarray(center_crop_resize(Image.fromarray(pixels), 16))).permute(2, 0, 1).float() / 127.5 - 1
    assert resized.shape == (2, 3, 16, 16) and torch.equal(resized[0], expected)
    assert lanczos_resize(generated, None) is generated
