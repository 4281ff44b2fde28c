"""`python -m eval [hydra overrides]`: evaluate a teacher's samplers and, if given, a student."""
from teachers.cli import hydra_entry


def main() -> None:
    """Console entry point; the config is configs/eval.yaml."""
    hydra_entry("eval", "eval.run")


if __name__ == "__main__":
    main()
