"""A Stable Diffusion-family pipeline (tokenizer, text encoder, VAE, UNet2DConditionModel, scheduler) as one EDM
denoiser on latents.

As k-diffusion's `external.py` (CompVisDenoiser): the adapter owns the alpha_bar -> sigma map, the timestep lookup,
eps / v conversion, the text conditioning (cond = text embeddings (B, L, D); the empty prompt is the unconditional
branch of classifier-free guidance), and the VAE (`decode` latents -> images in [-1, 1], `encode` the reverse, with
the VAE's `scaling_factor`). The losses and the loop see a denoiser on latents and a tensor `cond`, nothing else.
On disk it is a diffusers StableDiffusionPipeline folder plus `distill.json` (sigma_data, sigma_max).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from teachers.base import expand_sigma
from teachers.errors import ConfigError
from teachers.unet import EXTRA_FILE, DiffusersUNetParts, PREDICTION_TYPES, sigma_to_t, sigmas_from_alphas_cumprod, x0_from_output

log = logging.getLogger(__name__)

COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")  # what a Stable Diffusion pipeline folder holds
# Schedulers whose config is a DDPM beta schedule (their alphas_cumprod is the training schedule's).
DISCRETE_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "UniPCMultistepScheduler", "LCMScheduler", "KDPM2DiscreteScheduler", "DEISMultistepScheduler", "TCDScheduler",
)
DEFAULT_LATENT_SIGMA_DATA = 1.0  # scaled SD latents have about unit variance (that is what scaling_factor is for)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | None) -> torch.dtype | None:
    """teacher.dtype as a torch dtype (None: as stored)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"teacher.dtype={name}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def check_config(teacher, data) -> None:
    """teacher=sd's own settings, before any work: the data has prompts, a pipeline is given, the dtype is known."""
    if data.get("prompts") is None:
        raise ConfigError(f"teacher=sd is text-to-image but data={data.name} has no prompts; use data=mnist_sd, data=prompts "
                          "or set data.prompts")
    if teacher.path is None:
        raise ConfigError("teacher=sd needs teacher.path (a Stable Diffusion pipeline folder, zoo:mnist_sd or a hub id); "
                          "train the miniature one with `python -m teachers.train data=mnist teacher=sd_mini`")
    torch_dtype(teacher.get("dtype"))


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable {what}: {err}") from None


def is_text_pipeline(path: Path) -> bool:
    """A pipeline folder with a text encoder (Stable Diffusion family), as opposed to a DDPMPipeline."""
    path = Path(path)
    return (path / "text_encoder").is_dir() or "text_encoder" in (
        read_json(path / "model_index.json", "pipeline index") if (path / "model_index.json").is_file() else {})


def check_pipeline_folder(path: Path, key: str = "teacher.path") -> None:
    """Every component a Stable Diffusion folder needs is there (each missing one named); SDXL's second text encoder
    and its extra conditioning (pooled embeddings, time ids) are refused before any work, as is a scheduler the
    adapter does not know."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{key}={path} is not a diffusers pipeline folder (no model_index.json)")
    index = read_json(path / "model_index.json", "pipeline index")
    if "text_encoder_2" in index or index.get("_class_name", "").startswith("StableDiffusionXL"):
        raise ConfigError(
            f"{key}={path} is an SDXL pipeline ({index.get('_class_name')}): its UNet also takes pooled text embeddings and "
            "time ids from a second text encoder, which this adapter does not supply; SDXL teachers are not supported yet "
            "(Stable Diffusion 1.x / 2.x pipelines are)")
    missing = [name for name in COMPONENTS if not (path / name).is_dir()]
    if missing:
        raise ConfigError(f"{key}={path} is missing the pipeline component(s) {', '.join(missing)}; a Stable Diffusion "
                          f"folder has {', '.join(COMPONENTS)}")
    scheduler = read_json(path / "scheduler" / "scheduler_config.json", "scheduler config")
    name = scheduler.get("_class_name")
    if name not in DISCRETE_SCHEDULERS:
        raise ConfigError(f"{key}={path}: scheduler {name} is not one the adapter knows (it reads a DDPM beta schedule); "
                          f"known: {', '.join(DISCRETE_SCHEDULERS)}")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ConfigError(f"{key}={path}: scheduler prediction_type={prediction}; allowed: {', '.join(PREDICTION_TYPES)}")
    unet = read_json(path / "unet" / "config.json", "UNet config")
    if unet.get("addition_embed_type") is not None:
        raise ConfigError(f"{key}={path}: the UNet's addition_embed_type={unet['addition_embed_type']} needs extra "
                          "conditioning (SDXL-style) that this adapter does not supply")


def training_schedule(scheduler_config: dict):
    """A DDPMScheduler with the pipeline scheduler's beta schedule: its alphas_cumprod is the training schedule."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr", "timestep_spacing", "steps_offset")
    return DDPMScheduler(**{k: scheduler_config[k] for k in keys if k in scheduler_config})


class FrozenVAE:
    """What latent adapters (Stable Diffusion, DiT) share: a frozen VAE (and an optional AutoencoderTiny for previews)
    kept outside the module tree, so trainable copies deep-copy only the denoising network and share these."""

    SHARED = ("vae", "text_encoder", "tokenizer", "preview_vae")  # frozen helpers a copy shares, when present

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k not in self.SHARED}
        new.__dict__.update(copy.deepcopy(state, memo))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k in self.SHARED})
        return new

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images NCHW in [-1, 1] from latents in scaled units (z / scaling_factor through the VAE decoder)."""
        vae = self.vae
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        return images.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of images in [-1, 1] (a draw of the VAE posterior times scaling_factor)."""
        vae = self.vae
        posterior = vae.encode(images.to(vae.dtype)).latent_dist
        return (posterior.sample(generator) * vae.config.scaling_factor).float()

    def set_preview_vae(self, tiny) -> None:
        """teacher.preview_vae: an AutoencoderTiny (TAESD) that decodes progress sheets (evaluation keeps the VAE)."""
        self.__dict__["preview_vae"] = tiny.eval().requires_grad_(False)

    @torch.no_grad()
    def preview(self, latents: torch.Tensor) -> torch.Tensor:
        """Images for sheets and previews: through the AutoencoderTiny when one is set, else the VAE."""
        tiny = self.__dict__.get("preview_vae")
        if tiny is None:
            return self.decode(latents)
        return tiny.decode((latents / tiny.config.scaling_factor).to(tiny.dtype)).sample.float().clamp(-1, 1)

    def move_helpers(self, device) -> None:
        for key in ("vae", "text_encoder", "preview_vae"):
            if key in self.__dict__:
                self.__dict__[key].to(device)


class LatentDenoiser(FrozenVAE, DiffusersUNetParts, nn.Module):
    """D(x, sigma, text_embeddings) on a Stable Diffusion-family UNet's latents.

    x: float32 latents (B, C, h, w) in the VAE's scaled units plus sigma-scaled noise; sigma: scalar or (B,);
    cond: text embeddings (B, L, D) from `encode_condition`. The text encoder and VAE ride along (frozen) for
    conditioning and decoding; only the UNet is the denoiser's network (student and fake score train copies of it).
    """

    text_conditional = True
    vp_noise_input = True  # a student's first input is sqrt(1 + sigma^2) z: its UNet sees z, as in stock pipelines
    num_classes = None
    null_class = None

    def __init__(self, unet, scheduler, vae, text_encoder, tokenizer, sigma_data: float = DEFAULT_LATENT_SIGMA_DATA,
                 sigma_max: float | None = None):
        super().__init__()
        self.unet, self.scheduler = unet, scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type '{self.prediction_type}'; allowed: {', '.join(PREDICTION_TYPES)}")
        # Frozen helpers, outside the module tree: a trainable copy (student, fake score) deep-copies only the UNet.
        self.__dict__["vae"], self.__dict__["text_encoder"], self.__dict__["tokenizer"] = vae, text_encoder, tokenizer
        table = sigmas_from_alphas_cumprod(training_schedule(dict(scheduler.config)).alphas_cumprod.double()).float()
        if not torch.isfinite(table).all():
            raise ConfigError("the scheduler's last alpha_bar is 0 (zero terminal SNR): sigma_max would be infinite; "
                              "use a schedule with alpha_bar > 0 at the last timestep")
        self.register_buffer("sigmas", table, persistent=False)
        self.sigma_min = float(table[0])
        self.sigma_max = float(sigma_max if sigma_max is not None else table[-1])
        self.sigma_data = float(sigma_data)
        self._null = None  # the empty prompt's embedding, computed once

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if cond is None:
            raise ConfigError("a text-to-image denoiser needs text embeddings as cond (encode_condition(prompts))")
        sigma = expand_sigma(sigma, x).clamp(self.sigmas[0], self.sigmas[-1])
        x_vp = x * (1 + sigma**2).rsqrt()  # VP models see x / sqrt(1 + sigma^2)
        t = sigma_to_t(sigma.reshape(-1).float(), self.sigmas)
        dtype = self.unet.dtype
        output = self.unet(x_vp.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.to(x.dtype)
        return x0_from_output(output, x, sigma, self.prediction_type)

    @torch.no_grad()
    def encode_condition(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Text embeddings (P, L, D) of the prompts (the text encoder's last hidden state, as Stable Diffusion reads
        it); prompts longer than the tokenizer allows are truncated, with one warning that counts them."""
        device = next(self.text_encoder.parameters()).device
        limit = self.max_prompt_tokens
        too_long = sum(len(self.tokenizer(p).input_ids) > limit for p in prompts)
        if too_long:
            log.warning("%d of %d prompts are longer than the tokenizer's %d tokens and were truncated", too_long, len(prompts), limit)
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(list(prompts[i : i + batch_size]), padding="max_length", max_length=limit, truncation=True,
                                 return_tensors="pt").input_ids.to(device)
            out.append(self.text_encoder(ids)[0].float())
        return torch.cat(out) if out else torch.zeros(0, limit, self.unet.config.cross_attention_dim)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The empty prompt's embedding for every row of cond: the unconditional branch of classifier-free guidance."""
        if self._null is None or self._null.device != cond.device:
            self._null = self.encode_condition([""]).to(cond.device)
        return self._null.expand(len(cond), *self._null.shape[1:]).to(cond.dtype)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        self.move_helpers(next(self.unet.parameters()).device)
        self._null = None
        return self

    def extra_config(self) -> dict:
        return {"sigma_data": self.sigma_data, "sigma_max": self.sigma_max}

    def pipeline(self, scheduler=None):
        """A diffusers StableDiffusionPipeline of these components (no safety checker: the models are the user's)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                                       scheduler=scheduler or self.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    def save_pretrained(self, path, safe_serialization: bool = True, scheduler=None) -> None:
        """A StableDiffusionPipeline folder (stock diffusers loads it) plus distill.json."""
        self.pipeline(scheduler).save_pretrained(path, safe_serialization=safe_serialization)
        (Path(path) / EXTRA_FILE).write_text(json.dumps(self.extra_config(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, dtype: torch.dtype | None = None, key: str = "teacher.path") -> LatentDenoiser:
        """From a Stable Diffusion pipeline folder or hub id (hub ids need network); dtype (e.g. torch.bfloat16) for the
        frozen VAE and text encoder, and the UNet of a teacher that never trains."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        local = Path(path_or_id).is_dir()
        if local:
            check_pipeline_folder(Path(path_or_id), key)
        kw = {} if dtype is None else {"torch_dtype": dtype}
        unet = UNet2DConditionModel.from_pretrained(path_or_id, subfolder="unet", **kw)
        scheduler = _load_scheduler(path_or_id)
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", **kw).eval().requires_grad_(False)
        text_encoder = CLIPTextModel.from_pretrained(path_or_id, subfolder="text_encoder", **({"dtype": dtype} if dtype else {}))
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, subfolder="tokenizer")
        extra_path = Path(path_or_id) / EXTRA_FILE
        extra = json.loads(extra_path.read_text()) if local and extra_path.is_file() else {}
        return cls(unet, scheduler, vae, text_encoder.eval().requires_grad_(False), tokenizer, **extra)


def _load_scheduler(path_or_id):
    """The pipeline's own scheduler class, from its config."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(path_or_id, subfolder="scheduler")
    name = config.get("_class_name", "DDPMScheduler")
    if name not in DISCRETE_SCHEDULERS:
        raise ConfigError(f"{path_or_id}: scheduler {name} is not one the adapter knows; known: {', '.join(DISCRETE_SCHEDULERS)}")
    return getattr(diffusers, name).from_config(config)
