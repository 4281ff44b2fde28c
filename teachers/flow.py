"""Rectified flow (SD3, SD3.5, Flux) as one EDM denoiser, once for every flow-matching family.

x_t = (1 - t) x0 + t eps and the network predicts v = eps - x0 (Esser et al. 2024). In EDM terms sigma = t / (1 - t),
x = x_t / (1 - t) = x0 + sigma eps, and D(x, sigma) = x_t - t v. t = 1 is sigma = inf: there x_t is the noise itself,
so the family's convention for sigma = inf is that x *is* x_t (student_input returns the noise, as a stock pipeline
feeds it at its first timestep). Euler on the PF-ODE in sigma is exactly flow-matching Euler in t (eval/samplers.py
takes the limit of its first step from inf), so the teacher's full sampler is the stock scheduler's.

A family (SD3, Flux) says how its network is called (`network_output(x_t, t, cond)`, t in [0, 1]), which shift its
scheduler applies (`mu` for Flux's resolution-dependent one) and what it saves.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from teachers.base import Teacher, expand_sigma
from teachers.latent import FrozenVAE


def t_of_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """t = sigma / (1 + sigma), written 1 / (1 + 1/sigma) so that sigma = inf is t = 1."""
    return 1 / (1 + 1 / sigma)


def sigma_of_t(t: torch.Tensor) -> torch.Tensor:
    """sigma = t / (1 - t) (inf at t = 1), in float64 where it is computed, then as t's dtype."""
    t64 = t.double()
    return (t64 / (1 - t64)).to(t.dtype)


def flow_ramp(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Sigma at ramp position u in [0, 1] for a flow teacher: linear in t from t(sigma_max) (u = 0) to t(sigma_min)
    (u = 1), so DMD's [0.02, 0.98] range is t in about [0.02, 0.98], as DMD2-style SD3 work samples it. rho: unused
    (the Karras ramp's; kept so both ramps take the same range settings)."""
    hi, lo = (t_of_sigma(torch.tensor(float(s), dtype=torch.float64)) for s in (sigma_max, sigma_min))
    t = hi + u.double() * (lo - hi)
    return sigma_of_t(t).to(u.dtype)


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent shift mu: linear in the image's token count (FluxPipeline's calculate_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + base_shift - slope * base_seq_len


class FlowDenoiser(Teacher, nn.Module):
    """D(x, sigma, cond) for a network trained with rectified flow; subclasses call it in `network_output(x_t, t,
    cond)` (t (B,) in [0, 1]: the noise fraction, shift already in it) and name it in `network`.

    sigma_min is the scheduler's smallest t as a sigma; sigma_max is inf (t = 1)."""

    loss_weighting = "flow"

    def __init__(self, scheduler, sigma_data: float = 1.0):
        nn.Module.__init__(self)
        self.scheduler = scheduler
        self.sigma_min = float(sigma_of_t(torch.tensor(float(scheduler.sigma_min), dtype=torch.float64)))
        self.sigma_max = math.inf
        self.sigma_data = float(sigma_data)

    @property
    def network(self) -> nn.Module:
        raise NotImplementedError

    def network_output(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The network's velocity v = eps - x0 at x_t and t (B,)."""
        raise NotImplementedError

    def mu(self, shape: tuple[int, ...]) -> float | None:
        """The scheduler's resolution-dependent shift for samples of this shape (Flux); None: a fixed shift (SD3)."""
        return None

    def student_input(self, noise: torch.Tensor, sigma) -> torch.Tensor:
        """x_t = noise at t = 1 (sigma = inf: the convention that x is x_t there); noise (1 + sigma) = x_t / (1 - t)
        at a finite sigma, so that x_t is the noise itself."""
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        return noise if torch.isinf(sigma).all() else noise * (1 + sigma)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        sigma = expand_sigma(sigma, x)
        top = torch.isinf(sigma)
        x_t = torch.where(top, x, x / (1 + sigma.masked_fill(top, 0)))  # sigma = inf: x is x_t itself
        t = t_of_sigma(sigma)
        v = self.network_output(x_t, t.reshape(-1), cond).to(x.dtype)
        return x_t - t * v

    def sampling_sigmas(self, num_steps: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The stock scheduler's num_steps t's (its shift applied), as sigmas from inf, then a final 0."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        shape = tuple(shape or self.shape)
        if self.scheduler.config.get("use_dynamic_shifting"):  # Flux: its pipeline passes a linear t list and mu
            scheduler.set_timesteps(sigmas=[1 - i / num_steps for i in range(num_steps)], mu=self.mu(shape))
        else:
            scheduler.set_timesteps(num_steps)
        return sigma_of_t(scheduler.sigmas.double()).float()

    def noise_ramp(self, u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
        return flow_ramp(u, sigma_min, sigma_max, rho)

    def timesteps(self, sigmas: list[float]) -> list[float]:
        """The t of each sigma (what the exported scheduler's `sigmas=` takes)."""
        return t_of_sigma(torch.tensor(sigmas, dtype=torch.float64)).tolist()

    def export_scheduler(self, sigmas: list[float]):
        """A FlowMatchEulerDiscreteScheduler without shift, so `sigmas=` are the student's t's as they are; with
        stochastic_sampling for k steps (x0 re-noised with fresh noise at the next t: DMD2's k-step sampler). Its one
        default step is t = 1, the one-step student's."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        config |= {"shift": 1.0, "use_dynamic_shifting": False, "stochastic_sampling": len(sigmas) > 1, "shift_terminal": None}
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        ts = self.timesteps(sigmas)
        scheduler.set_timesteps(sigmas=ts)
        return scheduler, ts, True


class TextFlowDenoiser(FrozenVAE, FlowDenoiser):
    """What the flow-matching text-to-image pipelines (SD3, Flux) share: a transformer (`self.transformer`, the
    network students and fake scores copy), a frozen VAE with shift_factor, frozen text encoders outside the module
    tree, conds as the stock pipeline's `encode_prompt` makes them (a TensorDict per sample), and a pipeline folder
    plus distill.json on disk. A family names its pipeline (PIPELINE, `pipeline`), its conds (`encode_condition`)
    and its network call (`network_output`)."""

    text_conditional = True
    SNIPPET, PIPELINE = "", ""
    student_input = FlowDenoiser.student_input  # not FrozenVAE's VP rule: x_t is the noise at t = 1

    def __init__(self, transformer, scheduler, vae, texts: dict, sigma_data: float = 1.0, max_sequence_length: int = 256):
        FlowDenoiser.__init__(self, scheduler, sigma_data)
        self.transformer = transformer
        self.__dict__["vae"] = vae
        for name, part in texts.items():  # frozen helpers, outside the module tree: a copy shares them
            self.__dict__[name] = part
        self.max_sequence_length = int(max_sequence_length)
        self._null = None  # the empty prompt's conds, computed once (again after a move to another device)

    @property
    def network(self) -> nn.Module:
        return self.transformer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def bottleneck(self) -> nn.Module:
        """The middle joint block's image-token feed-forward: DMD2's GAN head reads its tokens (mean-pooled)."""
        blocks = self.transformer.transformer_blocks
        return blocks[len(blocks) // 2].ff

    @property
    def time_embedding(self) -> nn.Module:
        """The combined timestep (and pooled text) embedding every block's modulation reads."""
        return self.transformer.time_text_embed

    def text_parts(self) -> dict:
        return {name: self.__dict__[name] for name in self.SHARED if name.startswith(("text_encoder", "tokenizer"))}

    def encoder_device(self) -> torch.device:
        return next(self.__dict__["text_encoder"].parameters()).device

    @torch.no_grad()
    def encode_condition(self, prompts: list[str], batch_size: int = 256):
        """TensorDict(prompt_embeds (P, L, D), pooled (P, Dp)) of the prompts: the stock pipeline's own encode_prompt
        (its truncation, its zeros where an optional encoder is absent), batch by batch."""
        chunks = [self.encode_batch(list(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)]
        return torch.cat(chunks) if chunks else self.encode_batch([""])[:0]

    def encode_batch(self, prompts: list[str]):
        raise NotImplementedError

    def null_condition(self, cond):
        """The empty prompt's conds for every row of cond: CFG's unconditional branch, as the stock pipeline's negative."""
        if self._null is None or self._null.device != cond.device:
            self._null = self.encode_condition([""]).to(cond.device)
        return self._null.expand(len(cond)).clone()

    def text_encoder_digest_parts(self):
        """The encoders' weights, the tokenizers' vocabularies and the token limits (teachers.conditions keys its
        cache with them)."""
        weights, vocabulary = {}, []
        for name, part in sorted(self.text_parts().items()):
            if part is None:
                continue
            if name.startswith("text_encoder"):
                weights |= {f"{name}.{k}": v for k, v in part.state_dict().items()}
            else:
                vocabulary.append(sorted(part.get_vocab().items()))
        return weights, vocabulary, [self.max_sequence_length]

    def lora_network(self) -> nn.Module:
        return self.transformer

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def usage_snippet(self, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str | None:
        """The stock pipeline's call with the stored scheduler; `sigmas=` (the student's t's) for k steps (one step is
        the scheduler's default t = 1); guidance_scale=1: the guidance is distilled in."""
        if not exact:
            return None
        given = "" if len(sigmas) == 1 else f", sigmas={[round(t, 6) for t in self.timesteps(sigmas)]}"
        if self.max_sequence_length != 256:
            given += f", max_sequence_length={self.max_sequence_length}"
        return self.SNIPPET.format(prompts=list(prompts or ["a photo"])[:4], k=len(sigmas), given=given, **self.snippet_fields())

    def snippet_fields(self) -> dict:
        """The family's own fields of its SNIPPET (how the stock pipeline loads or is called)."""
        return {}

    def card_facts(self) -> tuple[str, str]:
        return "text-to-image", (f"a stock `{self.PIPELINE}` with the `FlowMatchEulerDiscreteScheduler` stored here runs it "
                                 "(no shift: `sigmas=` are the student's t's; guidance_scale=1: the guidance is distilled in)")

    def save_lora_weights(self, folder, lora) -> bool:
        """pytorch_lora_weights.safetensors for the family pipeline's load_lora_weights (the transformer's layers)."""
        import diffusers

        from teachers.latent import LORA_FILE

        weights, config = lora
        getattr(diffusers, self.PIPELINE).save_lora_weights(str(folder), transformer_lora_layers=weights,
                                                            transformer_lora_adapter_metadata=config, weight_name=LORA_FILE,
                                                            safe_serialization=True)
        return True

    def extra_config(self) -> dict:
        return {"sigma_data": self.sigma_data, "max_sequence_length": self.max_sequence_length}

    def save_pretrained(self, path, safe_serialization: bool = True, scheduler=None) -> None:
        """The family's stock pipeline folder plus distill.json; `scheduler` replaces the teacher's."""
        from teachers.vp import save_pipeline_folder

        save_pipeline_folder(self, path, safe_serialization, scheduler)

def load_text_flow(cls, folder, dtype, key: str, transformer_class: str, text_parts):
    """A text flow family's adapter from a local pipeline folder (its check run first): the transformer of
    `transformer_class` and the VAE in dtype, the text parts model_index.json names, the flow scheduler, distill.json."""
    from pathlib import Path

    import diffusers

    from teachers.families import FAMILIES, read_json
    from teachers.latent import load_text_parts
    from teachers.vp import read_extra

    folder = Path(folder)
    FAMILIES[cls.family].check_folder(folder, key)
    kw = {} if dtype is None else {"torch_dtype": dtype}
    transformer = getattr(diffusers, transformer_class).from_pretrained(folder, subfolder="transformer", **kw)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).eval().requires_grad_(False)
    texts = load_text_parts(folder, read_json(folder / "model_index.json", "pipeline index"), text_parts, dtype)
    return cls(transformer, load_flow_scheduler(folder), vae, texts, **read_extra(folder))


def load_flow_scheduler(folder):
    """The pipeline's FlowMatchEulerDiscreteScheduler (teachers.folders checked its class)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
