"""SDXL through the family door (teachers/sdxl.py) on a tiny random SDXL: its conds are stock diffusers' (both
encoders, the pooled embedding, zeros as CFG's null), one structured cond indexes, concatenates and caches as one
tensor does, exported 1-step (t = 399) and 4-step students are what stock StableDiffusionXLPipeline makes, the LoRA
export loads with load_lora_weights, the server's image is stock diffusers' image, and both DMD2 SDXL presets run."""
import json

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_sdxl_denoiser
from diffusers import StableDiffusionXLPipeline
from omegaconf import OmegaConf

import teachers
from distill.config import validate, loss_terms
from distill.export import export_student, student_record
from distill.build import build_state
from distill.loop import run
from distill.serve.model import PreviewModel
from distill.serve.source import StudentSource
from distill.tasks import LatentTask
from eval.samplers import multistep_student
from teachers.conditions import text_conditions
from teachers.errors import ConfigError
from teachers.latent import LORA_FILE
from test_export import run_card_snippet, trailing_sigmas

PROMPTS = ["a handwritten seven", "the digit 1"]


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_denoiser(seed=3)


def test_conds_are_the_stock_pipelines_and_the_null_is_zeros(sdxl):
    pipe = sdxl.pipeline()
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    cond = sdxl.encode_condition(PROMPTS)
    assert cond.batch_size == torch.Size([2]) and cond["prompt_embeds"].shape == (2, 12, 32) and cond["pooled"].shape == (2, 8)
    torch.testing.assert_close(cond["prompt_embeds"], embeds)
    torch.testing.assert_close(cond["pooled"], pooled)
    null = sdxl.null_condition(cond)
    torch.testing.assert_close(null["prompt_embeds"], negative)  # force_zeros_for_empty_prompt: zeros
    torch.testing.assert_close(null["pooled"], negative_pooled)
    assert not torch.allclose(cond["pooled"][0], cond["pooled"][1], atol=1e-3)  # the prompt matters, so the checks above can fail


def test_without_force_zeros_the_null_is_the_empty_prompts_conds():
    sdxl = tiny_sdxl_denoiser(force_zeros_for_empty_prompt=False)
    cond = sdxl.encode_condition(PROMPTS)
    _, negative, _, negative_pooled = sdxl.pipeline().encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    null = sdxl.null_condition(cond)
    torch.testing.assert_close(null["prompt_embeds"], negative)
    torch.testing.assert_close(null["pooled"], negative_pooled)
    assert null["pooled"].abs().max() > 0


def test_a_structured_cond_table_rows_cat_and_cache_as_one_tensor(sdxl, tmp_path):
    first = text_conditions(sdxl, PROMPTS * 3, None, tmp_path)
    again = text_conditions(sdxl, PROMPTS * 3, None, tmp_path)  # read back from cache_dir/text_embeddings
    assert list((tmp_path / "text_embeddings").glob("*/embeddings.safetensors"))
    assert first.digest() == again.digest()  # the same stored float32 values read back: a replay, no arithmetic
    rows = again.rows(torch.tensor([1, 0, 1]))
    torch.testing.assert_close(rows["pooled"], first.table["pooled"][[1, 0, 1]])
    both = torch.cat([rows, sdxl.null_condition(rows)])
    assert both.batch_size == torch.Size([6]) and both["prompt_embeds"].shape == (6, 12, 32)
    x = torch.randn(3, *sdxl.shape)
    with torch.no_grad():  # a batch of three equals its rows one by one (the cond is indexed with x)
        whole = sdxl(x, torch.tensor([0.5, 2.0, 9.0]), rows)
        alone = torch.cat([sdxl(x[i : i + 1], torch.tensor([[0.5, 2.0, 9.0][i]]), rows[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, alone, atol=1e-4, rtol=1e-4)  # batch shapes differ: float tolerance


@pytest.mark.parametrize("timesteps", [[399], [999, 749, 499, 249]])
def test_stock_sdxl_pipeline_makes_the_exported_students_images(sdxl, tmp_path, monkeypatch, timesteps):
    """DMD2's 1-step student at t = 399 (the card passes timesteps=[399]) and its 4-step one at 999, 749, 499, 249:
    the card's snippet, run verbatim, makes the toolkit's own images to 1e-3."""
    sigmas = [float(sdxl.sigmas[t]) for t in timesteps]
    assert len(timesteps) == 1 or sigmas == trailing_sigmas(sdxl, 4)
    folder = export_student(sdxl, None, tmp_path / "student", student_record(sigmas, 1.0, None, PROMPTS))
    stock = run_card_snippet(folder, monkeypatch)
    assert stock.shape == (2, 32, 32, 1) and "StableDiffusionXLPipeline" in (folder / "README.md").read_text()
    generator = torch.Generator().manual_seed(0)
    z = torch.randn((2, *sdxl.shape), generator=generator)
    with torch.no_grad():
        x = multistep_student(sdxl, z, torch.tensor(sigmas), sdxl.encode_condition(PROMPTS), generator)
        ours = (sdxl.decode(x) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(stock - ours).max() <= 1e-3


def test_the_server_makes_stock_diffusers_image_for_a_prompt_and_seed(sdxl, tmp_path):
    sigmas = [float(sdxl.sigmas[399])]
    folder = export_student(sdxl, None, tmp_path / "student", student_record(sigmas, 1.0, None, PROMPTS, family="sdxl"))
    model = PreviewModel(StudentSource(str(folder)).load_first())
    served = model.generate([11, 12], ["a handwritten seven", ""]).astype(int)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    for i, (seed, prompt) in enumerate([(11, "a handwritten seven"), (12, "")]):
        stock = pipe(prompt, num_inference_steps=1, timesteps=[399], guidance_scale=1.0, generator=torch.Generator().manual_seed(seed),
                     output_type="np").images[0]
        assert np.abs(np.round(stock * 255).astype(int) - served[i]).max() <= 1


def test_the_lora_export_loads_into_the_teachers_stock_pipeline(sdxl, tmp_path):
    sdxl.save_pretrained(tmp_path / "teacher")
    lora = OmegaConf.create({"rank": 4, "alpha": 8, "targets": ["to_q", "to_k", "to_v", "to_out.0"], "fake_score": False})
    state = build_state(sdxl, compose_config("train", ["run_dir=x"]).optim, 0.9, lora=lora)
    with torch.no_grad():  # stand-in for training: every adapter weight moves
        for name, p in state.student.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    export_student(state.student, None, tmp_path / "student", student_record([sdxl.sigma_max], family="sdxl"))
    x, t, cond = torch.randn(2, *sdxl.shape), torch.tensor([999.0, 500.0]), sdxl.encode_condition(PROMPTS)

    def output(unet):
        added = {"text_embeds": cond["pooled"], "time_ids": sdxl.time_ids(x)}
        return unet(x, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added).sample

    with torch.no_grad():
        trained, plain = output(state.student.unet), output(sdxl.unet)
        pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "teacher")
        pipe.load_lora_weights(tmp_path / "student", weight_name=LORA_FILE)
        loaded = output(pipe.unet)
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3)  # the adapters changed the network, so the check can fail


def sdxl_recipe(name, teacher, run_dir, *extra):
    return compose_config("train", [f"experiment={name}", f"teacher.path={teacher}", "teacher.dtype=float32", "train.mixed_precision=no",
                                    f"run_dir={run_dir}", *extra])


def captioned(folder, prompts):
    """data=prompts on the captioned digits (grey, padded to the VAE's 32 px as the miniature's data)."""
    return [f"data.prompts.path={prompts}", f"data.path={folder}", "data.mode=L", "data.pad=2", "data.test_fraction=0.5"]


@pytest.mark.parametrize("name, steps", [("sdxl_dmd2", 1), ("sdxl_dmd2_4step", 4)])
def test_the_sdxl_presets_validate_with_their_papers_settings(name, steps, tiny_sdxl_folder, captioned_digits, tmp_path):
    cfg = sdxl_recipe(name, tiny_sdxl_folder, tmp_path / "run", *captioned(*captioned_digits))
    assert isinstance(validate(cfg), LatentTask) and cfg.teacher.family == "sdxl"
    assert cfg.student.num_steps == steps and cfg.loss.guidance_scale == 8.0 and cfg.optim.student_lr == 5e-7
    assert cfg.train.num_fake_steps_per_student_step == 5 and "gan_generator" in loss_terms(cfg.loss)[0] and cfg.train.gradient_checkpointing


def test_a_gan_recipe_on_uncaptioned_images_is_refused_at_validation(tiny_sdxl_folder, captioned_digits, tmp_path):
    folder, prompts = captioned_digits
    bare = tmp_path / "bare"
    bare.mkdir()
    for png in list(folder.glob("*.png"))[:4]:
        (bare / png.name).write_bytes(png.read_bytes())
    cfg = sdxl_recipe("sdxl_dmd2", tiny_sdxl_folder, tmp_path / "run", *captioned(bare, prompts))
    with pytest.raises(ConfigError, match="the GAN's real side of a text-to-image teacher needs captioned images.*metadata.jsonl"):
        validate(cfg)


def test_the_four_step_lora_preset_runs_on_captioned_images_and_exports_lora_weights(tiny_sdxl_folder, captioned_digits, tmp_path):
    """The 4-step recipe's LoRA variant for two steps on the user's prompts and captioned images (GAN and gradient
    checkpointing on, as on a GPU)."""
    cfg = sdxl_recipe("sdxl_dmd2_4step", tiny_sdxl_folder, tmp_path / "run", *captioned(*captioned_digits), "debug=cpu_tiny_sd",
                      "lora.rank=4", f"eval.cache_dir={tmp_path / 'cache'}", "eval.second_classifier=null", "eval.num_samples=32",
                      "eval.quality_figures=false", "eval.cross_check=false", "eval.center_crop=28", "eval.feature_extractor=domain",
                      "eval.classifier_path=zoo:mnist_classifier", "eval.teacher_samplers=[{name: euler, num_steps: 1}]")
    metrics = run(cfg)
    assert set(metrics) == {"teacher_euler_nfe1", "student_nfe4"}
    student = tmp_path / "run" / "student"
    assert (student / LORA_FILE).is_file() and json.loads((student / "student.json").read_text())["family"] == "sdxl"
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("loss/gan_generator" in entry for entry in log)  # the real side: each image with its own caption
    assert teachers.load(student, key="student").family == "sdxl"


def test_an_sdxl_folder_without_its_second_encoder_is_one_error_line_and_nothing_is_written(tiny_sdxl_folder, tmp_path,
                                                                                           monkeypatch, capsys):
    import shutil

    from conftest import run_cli
    from distill.__main__ import main

    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl_folder, broken)
    shutil.rmtree(broken / "text_encoder_2")
    run_dir = tmp_path / "run"
    code = run_cli(main, ["experiment=sdxl_dmd2", "data=mnist_sd", f"teacher.path={broken}", f"hydra.run.dir={run_dir}"], monkeypatch)
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: ") and "missing the pipeline component(s) text_encoder_2; a Stable Diffusion XL folder" in lines[0]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "student").exists()


def test_captions_stay_with_their_images_through_the_split(captioned_digits):
    import numpy as np
    from PIL import Image

    from teachers.data import load_captioned_images

    folder, _ = captioned_digits
    cfg = OmegaConf.create({"source": "folder", "path": str(folder), "mode": "L", "caption_key": "text", "test_fraction": 0.5, "split_seed": 0})
    images, _, captions = load_captioned_images(cfg, "train")
    truth = {}
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        entry = json.loads(line)
        truth[np.asarray(Image.open(folder / entry["file_name"])).tobytes()] = entry["text"]
    pixels = ((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    assert len(captions) == len(images) == 48 and len(set(captions)) > 1
    assert [truth[p.tobytes()] for p in pixels] == captions


def test_a_domain_fid_on_unlabelled_images_is_refused_at_validation(tiny_sd_folder, captioned_digits, tmp_path):
    cfg = compose_config("train", ["experiment=mnist_sd", "data=prompts", f"teacher.path={tiny_sd_folder}", f"run_dir={tmp_path}",
                                   *captioned(*captioned_digits)])
    with pytest.raises(ConfigError, match="eval.feature_extractor=domain trains a classifier on the data's class labels"):
        validate(cfg)
