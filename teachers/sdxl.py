"""A Stable Diffusion XL pipeline (two tokenizers and text encoders, VAE, UNet2DConditionModel with `text_time`
conditioning, scheduler) as one EDM denoiser on latents: the `sdxl` family, taken by teacher=sd.

Its cond is one `TensorDict` per sample (teachers/conditions.py): `prompt_embeds` (L, D1 + D2), both encoders'
penultimate hidden states side by side, and `pooled` (D2), the second encoder's projected embedding, as
StableDiffusionXLPipeline.encode_prompt makes them. The micro-conditioning `time_ids` (original size, crop (0, 0),
target size) are the student's resolution, read from the latents' size, so they are not stored with each prompt.
The empty prompt's conds (zeros under `force_zeros_for_empty_prompt`, SDXL base's setting) are CFG's null.
"""
from __future__ import annotations

from pathlib import Path

import torch

from teachers.errors import ConfigError
from teachers.folders import check_sdxl_folder
from teachers.latent import TEXT_PARTS, LatentDenoiser, load_pipeline_parts, load_scheduler, torch_dtype
from teachers.vp import read_extra

SDXL_TEXT_PARTS = TEXT_PARTS + (("text_encoder_2", "CLIPTextModelWithProjection"), ("tokenizer_2", "CLIPTokenizer"))

SDXL_SNIPPET = '''import torch
from diffusers import StableDiffusionXLPipeline

pipe = StableDiffusionXLPipeline.from_pretrained(".")  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
prompts = {prompts!r}
images = pipe(prompts, num_inference_steps={k}, guidance_scale=1.0, generator=generator{timesteps}, output_type="np").images  # NHWC in [0, 1]
'''


check_folder = check_sdxl_folder  # the family's folder check (teachers.families)


class SDXLDenoiser(LatentDenoiser):
    """D(x, sigma, cond) on an SDXL UNet's latents; cond: TensorDict(prompt_embeds (B, L, D), pooled (B, P))."""

    family = "sdxl"
    SHARED = LatentDenoiser.SHARED + ("text_encoder_2", "tokenizer_2")
    MOVED = LatentDenoiser.MOVED + ("text_encoder_2",)
    SNIPPET, PIPELINE = SDXL_SNIPPET, "StableDiffusionXLPipeline"

    def __init__(self, unet, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 force_zeros_for_empty_prompt: bool = True, **extra):
        super().__init__(unet, scheduler, vae, text_encoder, tokenizer, **extra)
        self.__dict__["text_encoder_2"], self.__dict__["tokenizer_2"] = text_encoder_2, tokenizer_2
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's micro-conditioning per sample: original size, crop (0, 0), target size, all the student's resolution
        (the latents' size times the VAE's scale), as the stock pipeline sets them by default."""
        h, w = (side * self.vae_scale_factor for side in latents.shape[-2:])
        return latents.new_tensor([h, w, 0, 0, h, w]).expand(len(latents), 6)

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise ConfigError("an SDXL denoiser needs text conds (encode_condition(prompts))")
        dtype = self.unet.dtype
        added = {"text_embeds": cond["pooled"].to(dtype), "time_ids": self.time_ids(x_vp).to(dtype)}
        return self.unet(x_vp.to(dtype), t, encoder_hidden_states=cond["prompt_embeds"].to(dtype), added_cond_kwargs=added).sample

    @torch.no_grad()
    def encode_condition(self, prompts: list[str], batch_size: int = 256):
        """TensorDict(prompt_embeds, pooled) of the prompts, as StableDiffusionXLPipeline.encode_prompt makes them:
        each encoder's penultimate hidden state, concatenated; the pooled output of the first encoder that has one
        (the projecting second). Prompts longer than the tokenizer allows are truncated, with one warning."""
        from tensordict import TensorDict

        self.warn_truncated(prompts)
        pairs = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))
        chunks = []
        for i in range(0, len(prompts), batch_size):
            batch, hidden, pooled = list(prompts[i : i + batch_size]), [], None
            for tokenizer, encoder in pairs:
                ids = tokenizer(batch, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                return_tensors="pt").input_ids
                out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
                if pooled is None and out[0].ndim == 2:
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
            embeds = torch.cat(hidden, dim=-1).float()
            chunks.append(TensorDict(prompt_embeds=embeds, pooled=pooled.float(), batch_size=[len(batch)], device=embeds.device))
        return torch.cat(chunks) if chunks else self.encode_condition([""])[:0]

    def null_condition(self, cond):
        """CFG's unconditional branch for every row of cond: zeros under force_zeros_for_empty_prompt (as the stock
        pipeline makes its negative conds), else the empty prompt's conds."""
        if self.force_zeros_for_empty_prompt:
            return cond.apply(torch.zeros_like)
        if self._null is None or self._null.device != cond.device:
            self._null = self.encode_condition([""]).to(cond.device)
        return self._null.expand(len(cond)).clone()

    def text_encoder_digest_parts(self):
        weights = {f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}
        weights |= {f"text_encoder_2.{k}": v for k, v in self.text_encoder_2.state_dict().items()}
        vocabulary = [sorted(self.tokenizer.get_vocab().items()), sorted(self.tokenizer_2.get_vocab().items())]
        return weights, vocabulary, [self.max_prompt_tokens, int(self.tokenizer_2.model_max_length)]

    def pipeline(self, scheduler=None):
        """A diffusers StableDiffusionXLPipeline of these components (no watermarker: the images are the model's)."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                         tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                                         scheduler=scheduler or self.scheduler, add_watermarker=False,
                                         force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None, key: str = "teacher.path") -> SDXLDenoiser:
        """From a local SDXL pipeline folder; dtype for the frozen parts and a teacher's UNet. The VAE stays float32
        where its config says force_upcast and dtype is float16 (SDXL's VAE overflows in float16)."""
        folder = Path(folder)
        check_folder(folder, key)
        parts = load_pipeline_parts(folder, dtype, SDXL_TEXT_PARTS, upcast_vae=True)
        return cls(parts["unet"], load_scheduler(folder), parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["text_encoder_2"],
                   parts["tokenizer_2"], force_zeros_for_empty_prompt=parts["index"].get("force_zeros_for_empty_prompt", True),
                   **read_extra(folder))


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> SDXLDenoiser:
    """The SDXL adapter of a pipeline folder; dtype (teacher.dtype) for its frozen parts."""
    return SDXLDenoiser.from_pretrained(folder, dtype=torch_dtype(dtype), key=key)
