"""Train a small teacher with the EDM loss: `python -m teachers.train [hydra overrides]`."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from teachers.base import sample_log_normal_sigma
from teachers.cli import hydra_entry
from teachers.errors import ConfigError
from teachers.io import save_pretrained_atomic
from teachers.gmm import GaussianMixture, mixture_from_lists
from teachers.loss import edm_denoising_loss
from teachers.mlp import MLPDenoiser


def build_mlp(mixture: GaussianMixture, hidden_dim: int, num_layers: int, emb_dim: int) -> MLPDenoiser:
    """A fresh MLP denoiser whose sigma_data is the mixture's own std."""
    return MLPDenoiser(dim=mixture.dim, hidden_dim=hidden_dim, num_layers=num_layers, emb_dim=emb_dim, sigma_data=mixture.std)


def fit_denoiser(
    model: MLPDenoiser,
    mixture: GaussianMixture,
    *,
    max_steps: int,
    batch_size: int,
    lr: float,
    p_mean: float,
    p_std: float,
    ema_decay: float,
    seed: int,
    progress: bool = True,
) -> MLPDenoiser:
    """EDM training on fresh mixture samples every step; returns the EMA weights, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(max_steps, 1))
    ema = EMAModel(model.parameters(), decay=ema_decay)
    bar = tqdm(range(max_steps), desc="teacher", disable=not progress, mininterval=2)
    for _ in bar:
        x0 = mixture.sample(batch_size, generator=gen)
        sigma = sample_log_normal_sigma(batch_size, p_mean, p_std, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = edm_denoising_loss(model, x0, sigma, noise, sigma_data=model.sigma_data).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.step(model.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(model.parameters())
    return model.eval().requires_grad_(False)


def train_teacher(mixture: GaussianMixture, teacher_cfg: DictConfig, seed: int, max_steps: int | None = None) -> MLPDenoiser:
    """Build and fit the MLP teacher that teacher_cfg describes (net and fit keys).

    It draws only from its own seeded RNG, so the caller's random stream is the same whether the
    teacher was trained here or loaded from disk (what exact resume needs)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_mlp(mixture, **teacher_cfg.net)
    fit = OmegaConf.to_container(teacher_cfg.fit)
    if max_steps is not None:
        fit["max_steps"] = max_steps
    return fit_denoiser(model, mixture, seed=seed, **fit)


INT_KEYS = {"net": ("hidden_dim", "num_layers", "emb_dim"), "fit": ("max_steps", "batch_size")}


def check_teacher_config(teacher: DictConfig) -> None:
    """teacher.net sizes and teacher.fit steps are integers >= 1; the learning rate and EMA decay are in range."""
    for section, keys in INT_KEYS.items():
        for key in keys:
            value = teacher[section][key]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"teacher.{section}.{key}={value}; it must be an integer >= 1")
    for key in ("lr", "p_mean", "p_std", "ema_decay"):
        value = teacher.fit[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"teacher.fit.{key}={value}; it must be a number")
    if not (teacher.fit.lr > 0 and teacher.fit.p_std > 0 and 0 <= teacher.fit.ema_decay < 1):
        raise ConfigError(
            f"teacher.fit lr={teacher.fit.lr}, p_std={teacher.fit.p_std}, ema_decay={teacher.fit.ema_decay}; "
            "need lr > 0, p_std > 0 and 0 <= ema_decay < 1"
        )


def run(cfg: DictConfig) -> Path:
    """Train the teacher for cfg.data and save it to <run dir>/teacher."""
    mixture = mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
    check_teacher_config(cfg.teacher)
    steps = cfg.train.max_steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ConfigError(f"train.max_steps={steps}; it must be an integer >= 1")
    run_dir = Path(cfg.run_dir)
    torch.use_deterministic_algorithms(bool(cfg.deterministic))
    model = train_teacher(mixture, cfg.teacher, seed=cfg.seed, max_steps=cfg.train.max_steps)
    out = save_pretrained_atomic(model, run_dir / "teacher")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    print(f"teacher saved to {out}")
    return out


def main() -> None:
    """Console entry point; the config is configs/teacher_train.yaml."""
    hydra_entry("teacher_train", "teachers.train")


if __name__ == "__main__":
    main()
