"""Train a small teacher with the EDM loss (the work of `python -m teachers.train [hydra overrides]`)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from teachers.base import sample_log_normal_sigma
from teachers.data import load_images
from teachers.train import check
from teachers.errors import ConfigError
from teachers.io import save_pretrained_atomic
from teachers.gmm import GaussianMixture, mixture_from_lists
from teachers.loss import edm_denoising_loss
from teachers.mlp import MLPDenoiser
from teachers.unet import UNetDenoiser


def build_mlp(mixture: GaussianMixture, hidden_dim: int, num_layers: int, emb_dim: int) -> MLPDenoiser:
    """A fresh MLP denoiser whose sigma_data is the mixture's own std."""
    return MLPDenoiser(dim=mixture.dim, hidden_dim=hidden_dim, num_layers=num_layers, emb_dim=emb_dim, sigma_data=mixture.std)


def fit_denoiser(
    model,
    draw: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    max_steps: int,
    batch_size: int,
    lr: float,
    p_mean: float,
    p_std: float,
    ema_decay: float,
    seed: int,
    progress: bool = True,
):
    """EDM training on batches (x0, cond) = draw(batch_size, generator); returns the EMA weights, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(max_steps, 1))
    ema = EMAModel(model.parameters(), decay=ema_decay)
    bar = tqdm(range(max_steps), desc="teacher", disable=not progress, mininterval=2)
    for _ in bar:
        x0, cond = draw(batch_size, gen)
        sigma = sample_log_normal_sigma(batch_size, p_mean, p_std, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = edm_denoising_loss(model, x0, sigma, noise, sigma_data=model.sigma_data, cond=cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.step(model.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(model.parameters())
    return model.eval().requires_grad_(False)


def mixture_draw(mixture: GaussianMixture):
    """Fresh mixture samples every step, unconditional."""
    return lambda n, gen: (mixture.sample(n, generator=gen), None)


def image_draw(images: torch.Tensor, labels: torch.Tensor | None, label_dropout: float, null_class: int | None):
    """Random training images; labels replaced by the null class with probability label_dropout (for CFG)."""

    def draw(n: int, gen: torch.Generator):
        idx = torch.randint(len(images), (n,), generator=gen)
        if labels is None:
            return images[idx], None
        drop = torch.rand(n, generator=gen) < label_dropout
        return images[idx], torch.where(drop, null_class, labels[idx])

    return draw


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
    return fit_denoiser(model, mixture_draw(mixture), seed=seed, **fit)


def build_unet(shape: tuple[int, int, int], num_classes: int | None, *, block_out_channels, layers_per_block: int,
               norm_num_groups: int, scheduler: dict, sigma_data: float) -> UNetDenoiser:
    """A fresh UNet2DModel teacher on a DDPM schedule; class-conditional models get one extra (null) class for CFG."""
    c, h, w = shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; the UNet teachers here take square images")
    levels = len(block_out_channels)
    unet = UNet2DModel(
        sample_size=h, in_channels=c, out_channels=c, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=norm_num_groups, num_class_embeds=None if num_classes is None else num_classes + 1,
    )
    return UNetDenoiser(unet, DDPMScheduler(**scheduler), sigma_data=sigma_data, null_class=num_classes)


def train_image_teacher(data_cfg: DictConfig, teacher_cfg: DictConfig, seed: int, max_steps: int | None = None) -> UNetDenoiser:
    """Fit a UNet teacher with the EDM loss on the training split of the configured image data."""
    images, labels = load_images(data_cfg, "train")
    net = OmegaConf.to_container(teacher_cfg.net)
    conditional = net.pop("class_conditional")
    num_classes = int(labels.max()) + 1 if conditional else None
    if conditional and int(labels.min()) < 0:
        raise ConfigError("teacher.net.class_conditional=true but the data has unlabelled images (label -1)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_unet(tuple(images.shape[1:]), num_classes, **net, scheduler=OmegaConf.to_container(teacher_cfg.scheduler),
                           sigma_data=round(float(images.std()), 4))
    fit = OmegaConf.to_container(teacher_cfg.fit)
    draw = image_draw(images, labels if conditional else None, fit.pop("label_dropout"), num_classes)
    if max_steps is not None:
        fit["max_steps"] = max_steps
    return fit_denoiser(model, draw, seed=seed, **fit)


def run(cfg: DictConfig) -> Path:
    """Train the teacher for cfg.data and save it to <run dir>/teacher."""
    check(cfg)
    steps = cfg.train.max_steps
    torch.use_deterministic_algorithms(bool(cfg.deterministic))
    report = None
    if cfg.teacher.get("kind") == "sd":
        if cfg.teacher.net.get("family") == "sd3":  # teacher=sd3_mini
            from teachers.mini_sd3 import train_mini_sd3 as train_mini
        else:  # teacher=sd_mini
            from teachers.mini_sd import train_mini_sd as train_mini

        model, report = train_mini(cfg.data, cfg.teacher, seed=cfg.seed, max_steps=steps)
    elif cfg.data.get("kind", "toy") == "image":
        model = train_image_teacher(cfg.data, cfg.teacher, seed=cfg.seed, max_steps=steps)
    else:
        mixture = mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
        model = train_teacher(mixture, cfg.teacher, seed=cfg.seed, max_steps=steps)
    run_dir = Path(cfg.run_dir)
    out = save_pretrained_atomic(model, run_dir / "teacher")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if report is not None:
        (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"teacher saved to {out}")
    return out
