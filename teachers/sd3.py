"""A Stable Diffusion 3 / 3.5 pipeline (StableDiffusion3Pipeline: SD3Transformer2DModel, two CLIP encoders with
projection, an optional T5, the VAE with shift_factor, FlowMatchEulerDiscreteScheduler) as one EDM denoiser on
latents: the `sd3` family, on the rectified-flow base of teachers/flow.py, taken by teacher=sd3 (or teacher=sd).

Its cond is one TensorDict per sample, as StableDiffusion3Pipeline.encode_prompt makes it: `prompt_embeds` (L, D),
both CLIP encoders' penultimate hidden states side by side, padded to T5's width, then T5's tokens (zeros of
max_sequence_length tokens where the folder has no T5, as the pipeline pads); `pooled`, both CLIP projections.
The network's timestep is 1000 t (t the shifted noise fraction the scheduler's sigmas are).
"""
from __future__ import annotations

from pathlib import Path

import torch

from teachers.errors import ConfigError
from teachers.flow import TextFlowDenoiser, load_text_flow
from teachers.folders import check_sd3_folder
from teachers.latent import torch_dtype

SD3_TEXT_PARTS = (("text_encoder", "CLIPTextModelWithProjection"), ("tokenizer", "CLIPTokenizer"),
                  ("text_encoder_2", "CLIPTextModelWithProjection"), ("tokenizer_2", "CLIPTokenizer"),
                  ("text_encoder_3", "T5EncoderModel"), ("tokenizer_3", "T5TokenizerFast"))

SD3_SNIPPET = '''import torch
from diffusers import StableDiffusion3Pipeline

pipe = StableDiffusion3Pipeline.from_pretrained("."{load})  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
prompts = {prompts!r}
images = pipe(prompts, num_inference_steps={k}, guidance_scale=1.0, generator=generator{given}, output_type="np").images  # NHWC in [0, 1]
'''

check_folder = check_sd3_folder  # the family's folder check (teachers.families)


class SD3Denoiser(TextFlowDenoiser):
    """D(x, sigma, cond) on an SD3 transformer's latents; cond: TensorDict(prompt_embeds (B, L, D), pooled (B, P))."""

    family = "sd3"
    SHARED = ("vae", "preview_vae") + tuple(name for name, _ in SD3_TEXT_PARTS)
    MOVED = ("vae", "preview_vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    SNIPPET, PIPELINE = SD3_SNIPPET, "StableDiffusion3Pipeline"

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, size, size)

    def network_output(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise ConfigError("an SD3 denoiser needs text conds (encode_condition(prompts))")
        dtype = self.transformer.dtype
        timestep = (t * self.scheduler.config.num_train_timesteps).to(dtype)
        return self.transformer(hidden_states=x_t.to(dtype), timestep=timestep, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                                pooled_projections=cond["pooled"].to(dtype), return_dict=False)[0]

    def snippet_fields(self) -> dict:
        """Stock loading without T5 names the absent parts (diffusers does not take them as optional)."""
        return {"load": ", text_encoder_3=None, tokenizer_3=None" if self.__dict__["text_encoder_3"] is None else ""}

    def encode_batch(self, prompts: list[str]):
        from tensordict import TensorDict

        embeds, _, pooled, _ = self.pipeline().encode_prompt(prompts, None, None, device=self.encoder_device(), do_classifier_free_guidance=False,
                                                             max_sequence_length=self.max_sequence_length)
        return TensorDict(prompt_embeds=embeds.float(), pooled=pooled.float(), batch_size=[len(prompts)], device=embeds.device)

    def pipeline(self, scheduler=None):
        """A diffusers StableDiffusion3Pipeline of these components."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(transformer=self.transformer, scheduler=scheduler or self.scheduler, vae=self.vae,
                                        **self.text_parts())


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> SD3Denoiser:
    """The SD3 adapter of a pipeline folder; dtype (teacher.dtype) for its frozen parts."""
    return load_text_flow(SD3Denoiser, folder, torch_dtype(dtype), key, "SD3Transformer2DModel", SD3_TEXT_PARTS)
