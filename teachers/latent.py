"""A Stable Diffusion-family pipeline (tokenizer, text encoder, VAE, UNet2DConditionModel, scheduler) as one EDM
denoiser on latents.

As k-diffusion's `external.py` (CompVisDenoiser): the adapter owns the alpha_bar -> sigma map, the timestep lookup,
eps / v conversion, the text conditioning (cond = text embeddings (B, L, D); the empty prompt is the unconditional
branch of classifier-free guidance), and the VAE (`decode` latents -> images in [-1, 1], `encode` the reverse, with
the VAE's `scaling_factor`). The losses and the loop see a denoiser on latents and a tensor `cond`, nothing else.
On disk it is a diffusers StableDiffusionPipeline folder plus `distill.json` (sigma_data, sigma_max): the `sd` family.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from teachers.checks import check_dtype
from teachers.errors import ConfigError
from teachers.families import read_json
from teachers.folders import DISCRETE_SCHEDULERS, check_pipeline_folder
from teachers.unet import DiffusersUNetParts
from teachers.vp import VPDenoiser, read_extra

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
DEFAULT_LATENT_SIGMA_DATA = 1.0  # scaled SD latents have about unit variance (that is what scaling_factor is for)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # teachers.checks.DTYPE_NAMES


def torch_dtype(name: str | None) -> torch.dtype | None:
    """teacher.dtype as a torch dtype (None: as stored)."""
    check_dtype(name)
    return None if name is None else DTYPES[name]


class FrozenVAE:
    """What latent families (Stable Diffusion, DiT) share: a frozen VAE (and an optional AutoencoderTiny for previews)
    kept outside the module tree, so trainable copies deep-copy only the denoising network and share these; and the
    student's first input sqrt(1 + sigma^2) z, so its network sees z itself, as stock pipelines feed it at the top
    timestep: an exported student then makes the same latents there."""

    SHARED = ("vae", "text_encoder", "tokenizer", "preview_vae")  # frozen helpers a copy shares, when present
    MOVED = ("vae", "text_encoder", "preview_vae")  # the modules among them that follow the network's device
    latent = True

    def student_input(self, noise: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        return noise * (1 + sigma**2).sqrt()

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
        images = vae.decode((latents / vae.config.scaling_factor + self.vae_shift).to(vae.dtype)).sample
        return images.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of images in [-1, 1] (a draw of the VAE posterior times scaling_factor)."""
        vae = self.vae
        posterior = vae.encode(images.to(vae.dtype)).latent_dist
        return ((posterior.sample(generator) - self.vae_shift) * vae.config.scaling_factor).float()

    @property
    def vae_shift(self) -> float:
        """The VAE's shift_factor (SD3's and Flux's latents are (z - shift) * scale; 0 where the config has none)."""
        return float(self.vae.config.get("shift_factor") or 0.0)

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

    def decoder_module(self):
        return self.vae

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        device = next(self.network.parameters()).device
        for key in self.MOVED:
            if self.__dict__.get(key) is not None:  # an optional part (SD3's T5) may be None
                self.__dict__[key].to(device)
        return self


SD_SNIPPET = '''import torch
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained(".")  # this folder, or its hub id
generator = torch.Generator().manual_seed(0)
prompts = {prompts!r}
images = pipe(prompts, num_inference_steps={k}, guidance_scale=1.0, generator=generator{timesteps}, output_type="np").images  # NHWC in [0, 1]
'''


class LatentDenoiser(FrozenVAE, DiffusersUNetParts, VPDenoiser):
    """D(x, sigma, text_embeddings) on a Stable Diffusion-family UNet's latents.

    x: float32 latents (B, C, h, w) in the VAE's scaled units plus sigma-scaled noise; sigma: scalar or (B,);
    cond: text embeddings (B, L, D) from `encode_condition`. The text encoder and VAE ride along (frozen) for
    conditioning and decoding; only the UNet is the denoiser's network (student and fake score train copies of it).
    """

    family = "sd"
    text_conditional = True

    def __init__(self, unet, scheduler, vae, text_encoder, tokenizer, sigma_data: float = DEFAULT_LATENT_SIGMA_DATA,
                 sigma_max: float | None = None):
        super().__init__(scheduler, sigma_data, sigma_max)
        self.unet = unet
        # Frozen helpers, outside the module tree: a trainable copy (student, fake score) deep-copies only the UNet.
        self.__dict__["vae"], self.__dict__["text_encoder"], self.__dict__["tokenizer"] = vae, text_encoder, tokenizer
        self._null = None  # the empty prompt's embedding, computed once (again after a move to another device)

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def network_output(self, x_vp: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if cond is None:
            raise ConfigError("a text-to-image denoiser needs text embeddings as cond (encode_condition(prompts))")
        dtype = self.unet.dtype
        return self.unet(x_vp.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample

    @torch.no_grad()
    def encode_condition(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Text embeddings (P, L, D) of the prompts (the text encoder's last hidden state, as Stable Diffusion reads
        it); prompts longer than the tokenizer allows are truncated, with one warning that counts them."""
        device = next(self.text_encoder.parameters()).device
        limit = self.warn_truncated(prompts)
        out = []
        for i in range(0, len(prompts), batch_size):
            ids = self.tokenizer(list(prompts[i : i + batch_size]), padding="max_length", max_length=limit, truncation=True,
                                 return_tensors="pt").input_ids.to(device)
            out.append(self.text_encoder(ids)[0].float())
        return torch.cat(out) if out else torch.zeros(0, limit, self.unet.config.cross_attention_dim)

    def warn_truncated(self, prompts: list[str]) -> int:
        """One warning counting the prompts longer than the tokenizer's limit (they are truncated); the limit."""
        limit = self.max_prompt_tokens
        too_long = sum(len(self.tokenizer(p).input_ids) > limit for p in prompts)
        if too_long:
            log.warning("%d of %d prompts are longer than the tokenizer's %d tokens and were truncated", too_long, len(prompts), limit)
        return limit

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The empty prompt's embedding for every row of cond: the unconditional branch of classifier-free guidance."""
        if self._null is None or self._null.device != cond.device:
            self._null = self.encode_condition([""]).to(cond.device)
        return self._null.expand(len(cond), *self._null.shape[1:]).to(cond.dtype)

    def text_encoder_digest_parts(self):
        """What a prompt set's embeddings depend on besides the prompts: the encoder's weights, the vocabulary, the
        token limit (teachers.conditions keys its cache with them)."""
        return self.text_encoder.state_dict(), sorted(self.tokenizer.get_vocab().items()), self.max_prompt_tokens

    def pipeline(self, scheduler=None):
        """A diffusers StableDiffusionPipeline of these components (no safety checker: the models are the user's)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                                       scheduler=scheduler or self.scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    SNIPPET, PIPELINE = SD_SNIPPET, "StableDiffusionPipeline"

    def export_scheduler(self, sigmas: list[float]):
        """The LCMScheduler for k steps; exact wherever the student's timesteps are integers: the stock pipeline's
        `timesteps=` argument takes those its default spacing misses (DMD2's one-step SDXL student at t = 399)."""
        scheduler, timesteps, _ = super().export_scheduler(sigmas)
        return scheduler, timesteps, all(abs(t - round(t)) < 1e-3 for t in timesteps)

    def usage_snippet(self, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str | None:
        # Its own call, without CFG (guidance_scale=1): the guidance is distilled in.
        if not exact:
            return None
        scheduler, timesteps, _ = self.export_scheduler(sigmas)
        steps = [round(t) for t in timesteps]
        given = "" if steps == scheduler.timesteps.tolist() else f", timesteps={steps}"
        return self.SNIPPET.format(prompts=list(prompts or ["a photo"])[:4], k=len(sigmas), timesteps=given)

    def card_facts(self) -> tuple[str, str]:
        return "text-to-image", (f"a stock `{self.PIPELINE}` with the `LCMScheduler` stored here runs it "
                                 "(guidance_scale=1: the guidance is distilled in; `timesteps=` where the snippet passes them)")

    def save_lora_weights(self, folder, lora) -> bool:
        """pytorch_lora_weights.safetensors (the adapter's config as metadata) for the family pipeline's
        load_lora_weights (StableDiffusionPipeline's, StableDiffusionXLPipeline's)."""
        import diffusers

        weights, config = lora
        getattr(diffusers, self.PIPELINE).save_lora_weights(str(folder), unet_lora_layers=weights, unet_lora_adapter_metadata=config,
                                                            weight_name=LORA_FILE, safe_serialization=True)
        return True

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None, key: str = "teacher.path") -> LatentDenoiser:
        """From a local Stable Diffusion pipeline folder (teachers.load resolves hub ids); dtype (e.g. torch.bfloat16)
        for the frozen VAE and text encoder, and the UNet of a teacher that never trains."""
        folder = Path(folder)
        check_pipeline_folder(folder, key)
        parts = load_pipeline_parts(folder, dtype, TEXT_PARTS)
        return cls(parts["unet"], load_scheduler(folder), parts["vae"], parts["text_encoder"], parts["tokenizer"], **read_extra(folder))


TEXT_PARTS = (("text_encoder", "CLIPTextModel"), ("tokenizer", "CLIPTokenizer"))  # (component, class when unnamed)


def load_text_parts(folder: Path, index: dict, text_parts, dtype: torch.dtype | None) -> dict:
    """The tokenizers and frozen text encoders of a pipeline folder, of the classes model_index.json names (the
    default class where it names none); a part the index lists as [null, null] (SD3 without T5) is None."""
    import transformers

    parts = {}
    for name, default in text_parts:
        library, class_name = index.get(name, [None, default])
        if library is None and name in index:
            parts[name] = None
            continue
        kind = getattr(transformers, class_name)
        if name.startswith("text_encoder"):
            parts[name] = kind.from_pretrained(folder, subfolder=name, **({"dtype": dtype} if dtype else {})).eval().requires_grad_(False)
        else:
            parts[name] = kind.from_pretrained(folder, subfolder=name)
    return parts


def load_pipeline_parts(folder: Path, dtype: torch.dtype | None, text_parts, upcast_vae: bool = False) -> dict:
    """A Stable Diffusion-family folder's UNet, frozen VAE, and tokenizers and frozen text encoders of the classes
    model_index.json names (CLIPTokenizer, not AutoTokenizer's guess), in dtype; and `index`, model_index.json itself.
    upcast_vae: the VAE stays float32 where dtype is float16 and its config says force_upcast (SDXL's overflows)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = read_json(folder / "model_index.json", "pipeline index")
    kw = {} if dtype is None else {"torch_dtype": dtype}
    parts = {"index": index, "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)}
    if upcast_vae and dtype == torch.float16 and read_json(folder / "vae" / "config.json", "VAE config").get("force_upcast", True):
        kw = {"torch_dtype": torch.float32}
    parts["vae"] = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).eval().requires_grad_(False)
    return parts | load_text_parts(folder, index, text_parts, dtype)


def load_scheduler(folder):
    """The pipeline's own scheduler class, from its config."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(folder, subfolder="scheduler")
    name = config.get("_class_name", "DDPMScheduler")
    if name not in DISCRETE_SCHEDULERS:
        raise ConfigError(f"{folder}: scheduler {name} is not one the adapter knows; known: {', '.join(DISCRETE_SCHEDULERS)}")
    return getattr(diffusers, name).from_config(config)


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> LatentDenoiser:
    """The Stable Diffusion adapter of a pipeline folder; dtype (teacher.dtype) for its frozen parts."""
    return LatentDenoiser.from_pretrained(folder, dtype=torch_dtype(dtype), key=key)


check_folder = check_pipeline_folder  # the family's folder check (teachers.families)
