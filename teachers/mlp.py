"""A small MLP denoiser with EDM preconditioning: the teacher network for vector (toy) data.

It is a diffusers ModelMixin, so `save_pretrained` / `from_pretrained` give config.json +
diffusion_pytorch_model.safetensors, and students exported from it load with diffusers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from teachers.base import ConfigSigmas, Teacher, edm_precond, expand_sigma, sinusoidal_embedding
from teachers.folders import check_model_folder


class MLPDenoiser(ConfigSigmas, Teacher, ModelMixin, ConfigMixin):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM eq. 7) with F a residual MLP (the `mlp` family).

    x: float32 (B, dim); sigma: scalar or (B,). Returns the x0 estimate, (B, dim).
    """

    family = "mlp"

    @register_to_config
    def __init__(
        self,
        dim: int = 2,
        hidden_dim: int = 256,
        num_layers: int = 4,
        emb_dim: int = 64,
        sigma_data: float = 1.0,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ):
        super().__init__()
        self.emb_dim = emb_dim
        self.inp = nn.Linear(dim, hidden_dim)
        self.emb = nn.Sequential(nn.Linear(emb_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)) for _ in range(num_layers)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, dim))

    loss_weighting = "edm"  # EDM-preconditioned: EDM's lambda(sigma) is its own MSE

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    @property
    def bottleneck(self) -> nn.Module:
        """The module whose output is the last hidden features (B, hidden_dim): where a GAN head reads."""
        return self.out[0]

    @property
    def time_embedding(self) -> nn.Module:
        """The module whose output is the noise-level embedding (B, hidden_dim) added to the input features."""
        return self.emb

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """F_theta: the unpreconditioned network."""
        h = self.inp(x_in) + self.emb(sinusoidal_embedding(c_noise, self.emb_dim))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        sigma = expand_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_precond(sigma, self.config.sigma_data)
        return c_skip * x + c_out * self.raw(c_in * x, c_noise.reshape(-1))


def load_folder(folder: Path, dtype: str | None = None, key: str = "teacher.path") -> MLPDenoiser:
    """The MLP of a model folder: safetensors, or a tensors-only .bin (never a pickle that runs code)."""
    from teachers.folders import PICKLE_FILE, SAFETENSORS_FILE
    from teachers.io import safe_torch_load

    check_folder(folder, key)
    if (folder / SAFETENSORS_FILE).is_file():
        return MLPDenoiser.from_pretrained(folder, use_safetensors=True)
    model = MLPDenoiser.from_config(MLPDenoiser.load_config(folder))
    model.load_state_dict(safe_torch_load(folder / PICKLE_FILE))
    return model


check_folder = check_model_folder  # config.json and the weights (safetensors or a tensors-only .bin) are there
