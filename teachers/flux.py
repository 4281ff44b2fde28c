"""A Flux pipeline (FluxPipeline: FluxTransformer2DModel, CLIP's pooled embedding plus T5's tokens, the 16-channel VAE
with shift_factor, FlowMatchEulerDiscreteScheduler with the resolution-dependent shift) as one EDM denoiser on
latents: the `flux` family, on the rectified-flow base of teachers/flow.py, taken by teacher=flux (or teacher=sd).

Samples are the unpacked latents (C, H, W); the network sees them packed 2x2 into tokens with their image ids, the
prompt's T5 tokens with zero text ids, and timestep t. A guidance-distilled network (FLUX.1-dev: `guidance_embeds`)
takes its guidance as an embedding (`guidance`, distill.json, default 3.5 as FluxPipeline's): the teacher at that
embedding is the real score, and classifier-free guidance on it is refused. Its shift mu is read from the samples'
token count, as the pipeline computes it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from teachers.errors import ConfigError
from teachers.flow import TextFlowDenoiser, flux_mu, load_text_flow
from teachers.folders import check_flux_folder, refuse_cfg_on_guidance_embedding
from teachers.latent import torch_dtype

FLUX_TEXT_PARTS = (("text_encoder", "CLIPTextModel"), ("tokenizer", "CLIPTokenizer"),
                   ("text_encoder_2", "T5EncoderModel"), ("tokenizer_2", "T5TokenizerFast"))
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default: the embedding FLUX.1-dev is sampled at
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline's default latent side (1024 px through the 8x VAE)

FLUX_SNIPPET = '''import torch
from diffusers import FluxPipeline

pipe = FluxPipeline.from_pretrained(".")  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
prompts = {prompts!r}
images = pipe(prompts, num_inference_steps={k}, guidance_scale={guidance}, height={size}, width={size}, generator=generator{given}, output_type="np").images  # NHWC in [0, 1]
'''

check_folder = check_flux_folder  # the family's folder check (teachers.families)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 W/2, 4C): FluxPipeline's 2x2 packing of latents into tokens."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of pack for latents of side h x w."""
    b, _, channels = tokens.shape
    return tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h/2 w/2, 3) position ids of the packed tokens: (0, row, column), as FluxPipeline makes them."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxDenoiser(TextFlowDenoiser):
    """D(x, sigma, cond) on a Flux transformer's unpacked latents; cond: TensorDict(prompt_embeds (B, L, D), pooled (B, P))."""

    family = "flux"
    SHARED = ("vae", "preview_vae") + tuple(name for name, _ in FLUX_TEXT_PARTS)
    MOVED = ("vae", "preview_vae", "text_encoder", "text_encoder_2")
    SNIPPET, PIPELINE = FLUX_SNIPPET, "FluxPipeline"

    def __init__(self, transformer, scheduler, vae, texts: dict, sigma_data: float = 1.0, max_sequence_length: int = 512,
                 guidance: float = DEFAULT_GUIDANCE, sample_size: int = DEFAULT_SAMPLE_SIZE):
        super().__init__(transformer, scheduler, vae, texts, sigma_data, max_sequence_length)
        self.guidance, self.sample_size = float(guidance), int(sample_size)

    @property
    def guidance_distilled(self) -> bool:
        """The network takes its guidance as an embedding (FLUX.1-dev), not by CFG."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.transformer.config.in_channels // 4, self.sample_size, self.sample_size)

    def mu(self, shape: tuple[int, ...]) -> float:
        config = self.scheduler.config
        return flux_mu((shape[-2] // 2) * (shape[-1] // 2), config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                       config.get("base_shift", 0.5), config.get("max_shift", 1.15))

    def network_output(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise ConfigError("a Flux denoiser needs text conds (encode_condition(prompts))")
        dtype, (h, w) = self.transformer.dtype, x_t.shape[-2:]
        embeds = cond["prompt_embeds"].to(dtype)
        guidance = torch.full((len(x_t),), self.guidance, device=x_t.device) if self.guidance_distilled else None
        tokens = self.transformer(hidden_states=pack(x_t).to(dtype), timestep=t.to(dtype), guidance=guidance,
                                  pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=embeds,
                                  txt_ids=torch.zeros(embeds.shape[1], 3, device=x_t.device, dtype=dtype),
                                  img_ids=image_ids(h, w, x_t.device, dtype), return_dict=False)[0]
        return unpack(tokens, h, w)

    def check_guidance(self, scale: float) -> None:
        refuse_cfg_on_guidance_embedding(self.guidance_distilled, scale)

    def encode_batch(self, prompts: list[str]):
        from tensordict import TensorDict

        embeds, pooled, _ = self.pipeline().encode_prompt(prompts, None, device=self.encoder_device(),
                                                          max_sequence_length=self.max_sequence_length)
        return TensorDict(prompt_embeds=embeds.float(), pooled=pooled.float(), batch_size=[len(prompts)], device=embeds.device)

    def snippet_fields(self) -> dict:
        """The guidance embedding the student keeps (1 for an undistilled Flux), and the image side."""
        return {"guidance": f"{self.guidance if self.guidance_distilled else 1.0:g}", "size": self.sample_size * self.vae_scale_factor}

    def extra_config(self) -> dict:
        return super().extra_config() | {"guidance": self.guidance, "sample_size": self.sample_size}

    def pipeline(self, scheduler=None):
        """A diffusers FluxPipeline of these components."""
        from diffusers import FluxPipeline

        return FluxPipeline(transformer=self.transformer, scheduler=scheduler or self.scheduler, vae=self.vae, **self.text_parts())


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> FluxDenoiser:
    """The Flux adapter of a pipeline folder; dtype (teacher.dtype) for its frozen parts."""
    return load_text_flow(FluxDenoiser, folder, torch_dtype(dtype), key, "FluxTransformer2DModel", FLUX_TEXT_PARTS)
