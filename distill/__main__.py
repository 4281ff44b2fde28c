"""`python -m distill [hydra overrides]`: train a one-step student and evaluate it."""
import functools

from distill.config import check
from teachers.cli import hydra_entry


def main() -> None:
    """Console entry point; the config is configs/train.yaml, checked before torch is imported."""
    hydra_entry("train", "distill.loop", check=functools.partial(check, vp_tables=False))


if __name__ == "__main__":
    main()
