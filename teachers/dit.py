"""A class-conditional latent teacher in the DiT form (Peebles & Xie 2023): a diffusers DiTPipeline folder
(`DiTTransformer2DModel` + `AutoencoderKL` + a DDPM-family scheduler, e.g. facebook/DiT-XL-2-256) as one EDM
denoiser on latents (the `dit` family), on the VP base of teachers/vp.py.

cond = class labels; the null class of classifier-free guidance is the transformer's extra label row
(`num_embeds_ada_norm`, 1000 for ImageNet DiTs); a learned-sigma transformer's second half of channels is dropped (DMD
reads only the mean). `decode` / `encode` go through the VAE with its scaling_factor.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from teachers.errors import ConfigError
from teachers.folders import check_dit_folder
from teachers.latent import DEFAULT_LATENT_SIGMA_DATA, FrozenVAE, load_scheduler, torch_dtype
from teachers.vp import VPDenoiser, read_extra


DIT_SNIPPET = '''import torch
from diffusers import DiTPipeline

pipe = DiTPipeline.from_pretrained(".")  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
images = pipe([0, 1, 2, 3], num_inference_steps={k}, guidance_scale=1.0, generator=generator, output_type="np").images  # classes 0..{last}; NHWC in [0, 1]
'''


class DiTDenoiser(FrozenVAE, VPDenoiser):
    """D(x, sigma, class_labels) on a DiT's latents (B, C, h, w) in the VAE's scaled units."""

    family = "dit"

    def __init__(self, transformer, scheduler, vae, sigma_data: float = DEFAULT_LATENT_SIGMA_DATA, sigma_max: float | None = None):
        super().__init__(scheduler, sigma_data, sigma_max)
        self.transformer = transformer
        self.__dict__["vae"] = vae  # frozen, outside the module tree: trainable copies deep-copy the transformer only
        n = transformer.config.num_embeds_ada_norm
        if n is None:
            raise ConfigError("the DiT transformer has no class embedding (num_embeds_ada_norm is null); only class-conditional DiTs are supported")
        self.num_classes, self.null_class = int(n), int(n)  # labels 0..n-1; row n is the dropped label (CFG's null)
        for module in transformer.modules():  # diffusers drops 10% of labels in train mode (DiT's CFG training):
            if hasattr(module, "dropout_prob") and hasattr(module, "embedding_table"):  # a student or fake score must not
                module.dropout_prob = 0.0

    @property
    def network(self) -> nn.Module:
        return self.transformer

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, size, size)

    @property
    def bottleneck(self) -> nn.Module:
        """The middle transformer block: DMD2's GAN head reads its tokens (mean-pooled)."""
        blocks = self.transformer.transformer_blocks
        return blocks[len(blocks) // 2]

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise ConfigError("a class-conditional DiT needs class labels as cond")
        output = self.transformer(x_vp.to(self.transformer.dtype), t, class_labels=cond).sample
        return output[:, : x_vp.shape[1]]  # learned sigma: the variance channels are not used

    def pipeline(self, scheduler=None):
        from diffusers import DiTPipeline

        return DiTPipeline(transformer=self.transformer, vae=self.vae, scheduler=scheduler or self.scheduler)

    def usage_snippet(self, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str | None:
        return DIT_SNIPPET.format(k=len(sigmas), last=self.num_classes - 1) if exact else None

    def card_facts(self) -> tuple[str, str]:
        return "image-generation", ("a stock `DiTPipeline` with the `LCMScheduler` stored here runs it (guidance_scale=1: "
                                    "the guidance is distilled in)")

    @classmethod
    def from_pretrained(cls, folder, dtype: torch.dtype | None = None, key: str = "teacher.path") -> DiTDenoiser:
        """From a local DiTPipeline folder (teachers.load resolves hub ids)."""
        from diffusers import AutoencoderKL, DiTTransformer2DModel

        check_dit_folder(Path(folder), key)
        kw = {} if dtype is None else {"torch_dtype": dtype}
        transformer = DiTTransformer2DModel.from_pretrained(folder, subfolder="transformer", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).eval().requires_grad_(False)
        return cls(transformer, load_scheduler(folder), vae, **read_extra(Path(folder)))


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> DiTDenoiser:
    """The DiT adapter of a DiTPipeline folder; dtype (teacher.dtype) for its frozen parts."""
    return DiTDenoiser.from_pretrained(folder, dtype=torch_dtype(dtype), key=key)


check_folder = check_dit_folder  # the family's folder check (teachers.families)
