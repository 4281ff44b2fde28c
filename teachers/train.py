"""Train a small teacher with the EDM loss: `python -m teachers.train [hydra overrides]` (configs/teacher_train.yaml).
The config is checked here, before torch is imported; the work is teachers.fit's."""
from __future__ import annotations

from omegaconf import DictConfig

from teachers.checks import check_mlp_teacher, mixture_lists
from teachers.cli import hydra_entry
from teachers.errors import ConfigError


def check(cfg: DictConfig) -> None:
    """train.max_steps; for a toy mixture, the mixture and the MLP's sizes (image teachers check their data on load)."""
    steps = cfg.train.max_steps
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ConfigError(f"train.max_steps={steps}; it must be an integer >= 1")
    if cfg.teacher.get("kind") != "sd" and cfg.data.get("kind", "toy") != "image":
        mixture_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
        check_mlp_teacher(cfg.teacher)


def main() -> None:
    """Console entry point; the config is configs/teacher_train.yaml."""
    hydra_entry("teacher_train", "teachers.fit", check=check)


if __name__ == "__main__":
    main()
