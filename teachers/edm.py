"""EDM's networks as teachers (the `edm` family): SongUNet (CIFAR-10) or DhariwalUNet (ImageNet-64) under EDM's,
VP's or VE's preconditioning (Karras et al. 2022, Table 1), and EDM2's pixel UNet (Karras et al. 2024; EDM's
preconditioning).

A folder holds config.json (`_class_name: EDMDenoiser`) and the weights as safetensors, with NVlabs' parameter names
under `model.`; `python -m teachers.convert` makes one from an NVlabs pickle without running it. No diffusers pipeline
exists for these networks, so an exported student is such a folder too, sampled with the toolkit.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from teachers.base import ConfigSigmas, Teacher, edm_precond, expand_sigma
from teachers.edm_nets import NETWORKS
from teachers.folders import check_model_folder

PRECONDS = ("edm", "vp", "ve")  # EDMPrecond, VPPrecond, VEPrecond
EDM_SAMPLER_RANGE = (0.002, 80.0)  # the sigma range of EDM's sampler (generate.py), clipped to the network's own
NETWORK_RANGES = {"edm": (0.0, float("inf")), "ve": (0.02, 100.0)}  # EDMPrecond's and VEPrecond's defaults


def vp_sigma(t: torch.Tensor, beta_d: float, beta_min: float) -> torch.Tensor:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) of the VP SDE (EDM Table 1)."""
    return ((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt()


def vp_sigma_inv(sigma: torch.Tensor, beta_d: float, beta_min: float) -> torch.Tensor:
    """t(sigma), the inverse of vp_sigma."""
    return ((beta_min**2 + 2 * beta_d * (1 + sigma**2).log()).sqrt() - beta_min) / beta_d


def network_sigma_range(precond: str, sigma_max: float | None = None, sigma_min: float | None = None,
                        beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5) -> tuple[float, float]:
    """The toolkit's [sigma_min, sigma_max] for a network: EDM's sampler range within what the preconditioning supports
    (VP: sigma(epsilon_t)..sigma(1); VE and EDM: the bounds the network was built with, else their defaults)."""
    low, high = EDM_SAMPLER_RANGE
    if precond == "vp":
        lo_net, hi_net = (float(vp_sigma(torch.tensor(t, dtype=torch.float64), beta_d, beta_min)) for t in (epsilon_t, 1.0))
    else:
        lo_net = NETWORK_RANGES[precond][0] if sigma_min is None else sigma_min
        hi_net = NETWORK_RANGES[precond][1] if sigma_max is None else sigma_max
    return max(low, lo_net), min(high, hi_net)


class EDMDenoiser(ConfigSigmas, Teacher, ModelMixin, ConfigMixin):
    """D(x, sigma, class_labels) = c_skip x + c_out F(c_in x, c_noise, one_hot(labels)) (EDM eq. 7).

    x: float32 NCHW images in [-1, 1] plus sigma-scaled noise; sigma: scalar or (B,); cond: (B,) integer class labels
    for a class-conditional network (label_dim > 0), else None. The network runs in its parameters' dtype.
    """

    family = "edm"

    @register_to_config
    def __init__(self, model_type: str = "SongUNet", img_resolution: int = 32, img_channels: int = 3, label_dim: int = 0,
                 precond: str = "edm", sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, model_kwargs: dict | None = None,
                 source: str | None = None):
        super().__init__()
        if model_type not in NETWORKS:
            raise ValueError(f"model_type={model_type}; allowed: {', '.join(NETWORKS)}")
        if precond not in PRECONDS:
            raise ValueError(f"precond={precond}; allowed: {', '.join(PRECONDS)}")
        self.model = NETWORKS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                          out_channels=img_channels, label_dim=label_dim, **(model_kwargs or {}))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.config.img_channels, self.config.img_resolution, self.config.img_resolution)

    @property
    def num_classes(self) -> int | None:
        return self.config.label_dim or None

    @property
    def loss_weighting(self) -> str:
        """EDM's lambda(sigma) for EDMPrecond; VP and VE nets were trained with lambda = 1/sigma^2 (EDM Table 1)."""
        return "edm" if self.config.precond == "edm" else "epsilon"

    @property
    def bottleneck(self) -> nn.Module:
        """The encoder's last block: its output is the lowest-resolution features (where DMD2's ImageNet GAN reads)."""
        return list(self.model.enc.values())[-1]

    @property
    def time_embedding(self) -> nn.Module:
        """The layer whose output is the noise-level embedding, before the label is added (a step-aware fake score adds
        its step there)."""
        return self.model.time_embedding

    def card_facts(self) -> tuple[str, str]:
        return "unconditional-image-generation", (
            "no diffusers pipeline exists for EDM's networks, so stock diffusers does not run it: the folder loads with this "
            "toolkit (`teachers.load`, package onestep-distill) and samples with its sampler, as below")

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c_skip, c_out, c_in, c_noise of the network's preconditioning (EDM Table 1)."""
        if self.config.precond == "edm":
            return edm_precond(sigma, self.config.sigma_data)
        one = torch.ones_like(sigma)
        if self.config.precond == "vp":
            t = vp_sigma_inv(sigma, self.config.beta_d, self.config.beta_min)
            return one, -sigma, (sigma**2 + 1).rsqrt(), (self.config.M - 1) * t
        return one, sigma, one, (0.5 * sigma).log()

    def labels(self, cond, x: torch.Tensor) -> torch.Tensor | None:
        """One-hot float labels of integer classes (EDM's networks take one-hot vectors); zeros when none are given."""
        n = self.config.label_dim
        if not n:
            return None
        if cond is None:
            return torch.zeros(x.shape[0], n, device=x.device)
        return F.one_hot(torch.as_tensor(cond, device=x.device).long(), n).float()

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        x = x.float()
        sigma = expand_sigma(sigma, x).float()
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = next(self.model.parameters()).dtype
        out = self.model((c_in * x).to(dtype), c_noise.flatten(), self.labels(cond, x))
        return c_skip * x + c_out * out.float()


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> EDMDenoiser:
    """The network of a converted (or exported) folder, in teacher.dtype where one is set."""
    from teachers.latent import torch_dtype  # the one check of teacher.dtype's names

    check_folder(folder, key)
    return EDMDenoiser.from_pretrained(folder, use_safetensors=True, **({} if dtype is None else {"torch_dtype": torch_dtype(dtype)}))


check_folder = check_model_folder  # config.json and the safetensors weights are there
