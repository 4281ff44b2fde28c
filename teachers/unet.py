"""A diffusers UNet2DModel and its DDPM-family scheduler config as one EDM denoiser (the `unet` family).

On disk it is a diffusers DDPMPipeline folder (model_index.json, unet/, scheduler/) plus `distill.json` with the EDM
constants. The parameterisation lives in teachers/vp.py; this module says how the UNet is called and exported.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch import nn

from teachers.folders import check_unet_folder
from teachers.errors import ConfigError
from teachers.vp import VPDenoiser, read_extra

DEFAULT_SIGMA_DATA = 0.5  # EDM's value for images in [-1, 1]


class DiffusersUNetParts:
    """What every adapter of a diffusers UNet (`self.unet`) shares: the data shape, and the modules DMD2's GAN head and
    a step-aware fake score read."""

    @property
    def network(self) -> nn.Module:
        return self.unet

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    @property
    def bottleneck(self) -> nn.Module | None:
        """The module whose output is the UNet's bottleneck features (the mid block; DMD2's GAN head reads it)."""
        return self.unet.mid_block

    @property
    def time_embedding(self) -> nn.Module:
        """The module whose output is the noise-level embedding (B, C) every block reads (a step-aware fake score adds
        its step there)."""
        return self.unet.time_embedding


CLASS_SNIPPET = '''import torch
from diffusers import LCMScheduler, UNet2DModel

unet = UNet2DModel.from_pretrained(".", subfolder="unet")  # this folder, or its hub id
scheduler = LCMScheduler.from_pretrained(".", subfolder="scheduler")
generator = torch.Generator().manual_seed(0)
labels = torch.tensor([0, 1, 2, 3])  # classes 0..{last}
x = torch.randn((len(labels), {shape}), generator=generator)
scheduler.set_timesteps({k})
with torch.no_grad():
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x, generator=generator).prev_sample
images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # NHWC in [0, 1]
'''

PIPELINE_SNIPPET = '''import torch
from diffusers import DDPMPipeline

pipe = DDPMPipeline.from_pretrained(".")  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
images = pipe(batch_size=4, num_inference_steps={k}, generator=generator, output_type="np").images  # NHWC in [0, 1]
'''


class UNetDenoiser(DiffusersUNetParts, VPDenoiser):
    """D(x, sigma, class_labels) for a diffusers UNet2DModel trained on a DDPM-family schedule.

    x: float32 NCHW in data units (images in [-1, 1]) plus sigma-scaled noise; sigma: scalar or (B,);
    cond: (B,) long class labels for class-conditional UNets (`num_class_embeds`), else None.
    """

    family = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, sigma_data: float = DEFAULT_SIGMA_DATA,
                 sigma_max: float | None = None, null_class: int | None = None):
        super().__init__(scheduler, sigma_data, sigma_max)
        self.unet = unet
        n = unet.config.num_class_embeds
        if null_class is not None and null_class != (n or 0) - 1:
            raise ConfigError(f"null_class={null_class}, but the UNet's null class must be its last class embedding, "
                              f"{(n or 0) - 1} (num_class_embeds={n})")
        self.null_class = null_class

    @property
    def num_classes(self) -> int | None:
        """Class labels the UNet takes (the null class of label dropout excluded); None when unconditional."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - (self.null_class is not None)

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return self.unet(x_vp.to(self.unet.dtype), t, class_labels=cond).sample

    def extra_config(self) -> dict:
        return super().extra_config() | {"null_class": self.null_class}

    def pipeline(self, scheduler=None):
        return DDPMPipeline(unet=self.unet, scheduler=scheduler or self.scheduler)

    def usage_snippet(self, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str | None:
        if not exact:
            return None
        shape = ", ".join(map(str, self.shape))
        if self.num_classes:  # DDPMPipeline passes no class labels: the same loop, written out
            return CLASS_SNIPPET.format(last=self.num_classes - 1, shape=shape, k=len(sigmas))
        return PIPELINE_SNIPPET.format(k=len(sigmas))

    def card_facts(self) -> tuple[str, str]:
        return "unconditional-image-generation", (
            "stock diffusers runs it with the `LCMScheduler` stored here; `DDPMPipeline` passes no class labels, so the "
            "loop is written out" if self.num_classes else "a stock `DDPMPipeline` with the `LCMScheduler` stored here runs it")

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> UNetDenoiser:
        """From a local pipeline folder with unet/ and scheduler/ subfolders (teachers.load resolves hub ids)."""
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet", **({} if dtype is None else {"torch_dtype": dtype}))
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        return cls(unet, scheduler, **read_extra(Path(folder)))


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> UNetDenoiser:
    """The UNet adapter of a DDPMPipeline folder (teacher or exported student)."""
    check_folder(folder, key)
    return UNetDenoiser.from_pretrained(folder)


check_folder = check_unet_folder  # the family's folder check (teachers.families)
