"""`python -m distill [hydra overrides]`: train a one-step student and evaluate it."""
from teachers.cli import hydra_entry


def main() -> None:
    """Console entry point; the config is configs/train.yaml."""
    hydra_entry("train", "distill.loop")


if __name__ == "__main__":
    main()
