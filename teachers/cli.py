"""What every hydra entry point shares: the preset check and one-line errors."""
from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from teachers.errors import ConfigError, TrainingStopped
from teachers.schema import register

# The hydra configs ship inside the `distill` package (package data), so an installed wheel finds them from any
# directory; the repository's top-level `configs` is a link to them.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "distill" / "configs"
register()  # their schema (teachers.schema) is in hydra's ConfigStore wherever they are composed


def launch_time(pattern: str) -> str:
    """`${launch_time:%H-%M-%S}` in the default run directories: the start of the launcher (torchrun, `accelerate
    launch`) for each process it started, so every process of a run resolves the same directory; the time now for a
    process started alone (hydra's `${now:...}`). Across nodes, give hydra.run.dir."""
    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import psutil

        started = psutil.Process(os.getppid()).create_time()
    return datetime.fromtimestamp(started).strftime(pattern)


OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)


def user_config_dirs(argv: list[str]) -> list[Path]:
    """The user's own config directories on the command line: `--config-dir DIR` (`-cd`) and
    `hydra.searchpath=[file://DIR, ...]` (where their presets live beside the shipped ones)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(arg.partition("=")[2])
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            entries = arg.partition("=")[2].strip("[]").split(",")
            dirs += [e.strip().strip("'\"").removeprefix("file://") for e in entries if e.strip().strip("'\"").startswith("file://")]
    return [Path(d) for d in dirs]


def check_presets(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Refuse `group=name` overrides whose config file does not exist (in the shipped configs or a config directory of
    the user's on the command line), naming what is allowed."""
    roots = [config_dir, *user_config_dirs(argv)]
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        group_dirs = [root / key for root in roots if key and (root / key).is_dir()]
        if not sep or arg.startswith(("hydra", "-")) or not group_dirs:
            continue
        allowed = sorted({p.stem for group_dir in group_dirs for p in group_dir.glob("*.yaml")})
        for name in value.split(","):
            if name not in allowed and name != "null":
                raise ConfigError(f"unknown {key} preset '{name}'; allowed: {', '.join(allowed)}")


def report_config_errors(run: Callable[[DictConfig], object]) -> Callable[[DictConfig], None]:
    """Wrap run(cfg): a ConfigError prints one line and exits 2; a TrainingStopped, one line and its own code."""

    @functools.wraps(run)
    def task(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except TrainingStopped as err:
            print(f"stopped: {err}", file=sys.stderr)
            sys.exit(err.exit_code)

    return task


HIDDEN_DETAIL = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")


def composition_error_line(err: BaseException) -> str:
    """hydra's and OmegaConf's multi-line composition errors (an unknown key, a value of the wrong type, a bad
    override) as one line: the message and its cause, without the object dumps."""
    parts = []
    for exc in (err, err.__cause__):
        for line in str(exc or "").splitlines():
            line = line.strip().rstrip(".")
            if line and not line.startswith(HIDDEN_DETAIL) and line not in parts:
                parts.append(line)
    return "; ".join(parts)


def hydra_entry(config_name: str, run_module: str, check: Callable[[DictConfig], object] | None = None) -> None:
    """Check preset names on the command line, compose the config, check it with `check` (light: no torch), and only
    then import run_module (heavy: torch, diffusers, accelerate) and run it. `--help` and `--cfg job` never import it."""
    try:
        check_presets(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    import importlib

    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def checked_run(cfg: DictConfig) -> object:
        if check is not None:
            check(cfg)
        return importlib.import_module(run_module).run(cfg)

    users = os.environ.get("HYDRA_FULL_ERROR")  # the user's own setting: hydra's full report
    os.environ["HYDRA_FULL_ERROR"] = "1"  # composition errors reach us instead of hydra's multi-line report
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(report_config_errors(checked_run))()
    except (HydraException, OmegaConfBaseException) as err:
        if users is not None:
            raise
        print(f"error: {composition_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    finally:
        if users is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
