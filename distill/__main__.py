"""`python -m distill [hydra overrides]`: train a one-step student and evaluate it."""
import hydra

from distill.loop import run
from teachers.cli import CONFIG_DIR, guarded_main, report_config_errors

_hydra_main = hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(report_config_errors(run))


def main() -> None:
    """Console entry point."""
    guarded_main(_hydra_main)


if __name__ == "__main__":
    main()
