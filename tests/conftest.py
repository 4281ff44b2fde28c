"""Shared fixtures: small analytic mixtures and hydra composition of the real configs."""
from __future__ import annotations

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
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)
