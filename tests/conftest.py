"""Shared fixtures: small analytic mixtures and hydra composition of the real configs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from teachers.cli import CONFIG_DIR
from teachers.gmm import mixture_from_lists


@pytest.fixture
def ring4():
    """4 well-separated modes in 2-D with unequal weights."""
    return mixture_from_lists([[2, 0], [0, 2], [-2, 0], [0, -2]], [0.1, 0.15, 0.1, 0.2], [0.4, 0.3, 0.2, 0.1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def compose_config(name: str, overrides: list[str]):
    """The config that `python -m <entry> overrides` would build, without running it."""
    if name == "train" and not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=toy_gmm", *overrides]  # the default main job is MNIST; these tests are about toys
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tiny_unet_denoiser(prediction_type: str = "v_prediction", num_classes: int | None = None, size: int = 8, channels: int = 1):
    """A random two-level UNet2DModel on a 1000-step linear DDPM schedule, wrapped as an EDM denoiser."""
    from diffusers import DDPMScheduler, UNet2DModel

    from teachers.unet import UNetDenoiser

    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    return UNetDenoiser(unet, scheduler, null_class=num_classes).eval().requires_grad_(False)


def load_script(relative_path: str):
    """A script of the repository (experiments/...) imported as a module, so tests call its functions."""
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
