"""A class-conditional latent teacher in the DiT form (Peebles & Xie 2023): a diffusers DiTPipeline folder
(`DiTTransformer2DModel` + `AutoencoderKL` + a DDPM-family scheduler, e.g. facebook/DiT-XL-2-256) as one EDM
denoiser on latents, by the same adapter pattern as teachers/unet.py and teachers/latent.py.

cond = class labels; the null class of classifier-free guidance is the transformer's extra label row
(`num_embeds_ada_norm`, 1000 for ImageNet DiTs); a learned-sigma transformer's second half of channels is dropped (DMD
reads only the mean). `decode` / `encode` go through the VAE with its scaling_factor.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from teachers.base import expand_sigma
from teachers.errors import ConfigError
from teachers.latent import DEFAULT_LATENT_SIGMA_DATA, FrozenVAE, _load_scheduler, read_json, training_schedule
from teachers.unet import EXTRA_FILE, PREDICTION_TYPES, sigma_to_t, sigmas_from_alphas_cumprod, x0_from_output

DIT_COMPONENTS = ("transformer", "vae", "scheduler")


def is_dit_pipeline(path: Path) -> bool:
    path = Path(path)
    return (path / "transformer").is_dir() and (path / "model_index.json").is_file() and \
        read_json(path / "model_index.json", "pipeline index").get("_class_name") == "DiTPipeline"


def check_dit_folder(path: Path, key: str = "teacher.path") -> None:
    """Every component a DiTPipeline folder needs (a missing one named), a known scheduler."""
    missing = [name for name in DIT_COMPONENTS if not (Path(path) / name).is_dir()]
    if missing:
        raise ConfigError(f"{key}={path} is missing the pipeline component(s) {', '.join(missing)}; a DiT folder has {', '.join(DIT_COMPONENTS)}")
    _load_scheduler(path)


class DiTDenoiser(FrozenVAE, nn.Module):
    """D(x, sigma, class_labels) on a DiT's latents (B, C, h, w) in the VAE's scaled units."""

    vp_noise_input = True  # as the SD adapter: a student's first input is sqrt(1 + sigma^2) z, what DiTPipeline feeds

    def __init__(self, transformer, scheduler, vae, sigma_data: float = DEFAULT_LATENT_SIGMA_DATA, sigma_max: float | None = None):
        super().__init__()
        self.transformer, self.scheduler = transformer, scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type '{self.prediction_type}'; allowed: {', '.join(PREDICTION_TYPES)}")
        self.__dict__["vae"] = vae  # frozen, outside the module tree: trainable copies deep-copy the transformer only
        table = sigmas_from_alphas_cumprod(training_schedule(dict(scheduler.config)).alphas_cumprod.double()).float()
        self.register_buffer("sigmas", table, persistent=False)
        self.sigma_min, self.sigma_max = float(table[0]), float(sigma_max if sigma_max is not None else table[-1])
        self.sigma_data = float(sigma_data)
        n = transformer.config.num_embeds_ada_norm
        if n is None:
            raise ConfigError("the DiT transformer has no class embedding (num_embeds_ada_norm is null); only class-conditional DiTs are supported")
        self.num_classes, self.null_class = int(n), int(n)  # labels 0..n-1; row n is the dropped label (CFG's null)
        for module in transformer.modules():  # diffusers drops 10% of labels in train mode (DiT's CFG training):
            if hasattr(module, "dropout_prob") and hasattr(module, "embedding_table"):  # a student or fake score must not
                module.dropout_prob = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, size, size)

    @property
    def bottleneck(self) -> nn.Module:
        """The middle transformer block: DMD2's GAN head reads its tokens (mean-pooled)."""
        blocks = self.transformer.transformer_blocks
        return blocks[len(blocks) // 2]

    @property
    def loss_weighting(self) -> str:
        return self.prediction_type

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if cond is None:
            raise ConfigError("a class-conditional DiT needs class labels as cond")
        sigma = expand_sigma(sigma, x).clamp(self.sigmas[0], self.sigmas[-1])
        x_vp = x * (1 + sigma**2).rsqrt()
        t = sigma_to_t(sigma.reshape(-1).float(), self.sigmas)
        dtype = self.transformer.dtype
        output = self.transformer(x_vp.to(dtype), t, class_labels=cond).sample.to(x.dtype)
        output = output[:, : x.shape[1]]  # learned sigma: the variance channels are not used
        return x0_from_output(output, x, sigma, self.prediction_type)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        self.move_helpers(next(self.transformer.parameters()).device)
        return self

    def extra_config(self) -> dict:
        return {"sigma_data": self.sigma_data, "sigma_max": self.sigma_max}

    def save_pretrained(self, path, safe_serialization: bool = True, scheduler=None) -> None:
        """A DiTPipeline folder (stock diffusers loads it) plus distill.json."""
        from diffusers import DiTPipeline

        DiTPipeline(transformer=self.transformer, vae=self.vae, scheduler=scheduler or self.scheduler).save_pretrained(
            path, safe_serialization=safe_serialization)
        (Path(path) / EXTRA_FILE).write_text(json.dumps(self.extra_config(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path_or_id, dtype: torch.dtype | None = None, key: str = "teacher.path") -> DiTDenoiser:
        from diffusers import AutoencoderKL, DiTTransformer2DModel

        local = Path(path_or_id).is_dir()
        if local:
            check_dit_folder(Path(path_or_id), key)
        kw = {} if dtype is None else {"torch_dtype": dtype}
        transformer = DiTTransformer2DModel.from_pretrained(path_or_id, subfolder="transformer", **kw)
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", **kw).eval().requires_grad_(False)
        extra_path = Path(path_or_id) / EXTRA_FILE
        extra = json.loads(extra_path.read_text()) if local and extra_path.is_file() else {}
        return cls(transformer, _load_scheduler(path_or_id), vae, **extra)
