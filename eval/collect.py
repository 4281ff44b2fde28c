"""Collect a sweep's metrics.json files into a markdown table (and a plot):

    python -m eval.collect ROOT [--keys KEY ...] [--figures FIG ...] [--out FILE] [--plot KEY:FIG --plot-out PNG]

FIG is a metrics.json field, dotted for nested ones (second_extractor.fid). KEY is a dotted config key (loss.guidance_scale), a command-line override of the run (experiment), or
log.<name>: the run's last train_log.jsonl record (log.step, log.time/train_minutes: where a time-capped run stopped).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

from eval.plots import line_plot

DEFAULT_FIGURES = ("nfe", "fd", "mmd", "mode_recall", "mode_weight_error", "off_mode_share")


def full_teacher(figures: dict) -> str:
    """The teacher sampler with the most NFE in a metrics.json or an eval.bench json: the full sampler."""
    return max((k for k in figures if k.startswith("teacher_")), key=lambda k: figures[k]["nfe"])


def natural_key(path: Path) -> list:
    """Sort hydra job folders 0, 1, ..., 10 by number, not as text."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides (hydra's .hydra/overrides.yaml) as {key: value}."""
    path = run_dir / ".hydra" / "overrides.yaml"
    items = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else []
    return dict(item.lstrip("+~").split("=", 1) for item in items if "=" in item)


def last_log_record(run_dir: Path) -> dict:
    """The last scalar record of the run's train_log.jsonl ({} when there is none)."""
    path = run_dir / "train_log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def load_runs(root: Path) -> list[dict]:
    """Every run under root that has a metrics.json: {'run', 'config', 'overrides', 'metrics', 'last_log'}, in natural order."""
    runs = []
    for path in sorted(root.rglob("metrics.json"), key=natural_key):
        cfg_path = path.parent / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(cfg_path)) if cfg_path.exists() else {}
        runs.append({
            "run": path.parent.relative_to(root).as_posix(), "config": config,
            "overrides": read_overrides(path.parent), "metrics": json.loads(path.read_text()),
            "last_log": last_log_record(path.parent),
        })
    return runs


def run_value(run: dict, key: str):
    """The config value, else the run's command-line override (e.g. experiment, which leaves no config key);
    log.<name> reads the run's last train_log.jsonl record."""
    if key.startswith("log."):
        return run.get("last_log", {}).get(key.removeprefix("log."))
    value = config_value(run["config"], key)
    return run.get("overrides", {}).get(key) if value is None else value


def config_value(config: dict, dotted: str):
    """config['a']['b'] for 'a.b', or None."""
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def format_cell(value) -> str:
    """Numbers to 4 significant figures; everything else as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):  # an interval, e.g. fid_ci95
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A github markdown table of rows (dicts) over columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sampler_rows(runs: list[dict], keys: list[str], figures: list[str], samplers: list[str] | None = None) -> list[dict]:
    """One row per (run, sampler): config keys, then the sampler's figures."""
    rows = []
    for run in runs:
        for sampler, entry in run["metrics"].items():
            if samplers is None or sampler in samplers:
                row = {"run": run["run"], "sampler": sampler, **{k: run_value(run, k) for k in keys}}
                rows.append(row | {f: config_value(entry, f) for f in figures})  # dotted: second_extractor.fid
    return rows


def parse_plot(spec: str, keys: list[str], figures: list[str]) -> tuple[str, str]:
    """KEY:FIG, both among the table's --keys and --figures."""
    x_key, _, y_key = spec.partition(":")
    if x_key not in keys or y_key not in figures:
        raise ValueError(f"--plot {spec}: need KEY:FIG with KEY in --keys {keys} and FIG in --figures {figures}")
    return x_key, y_key


def main(argv: list[str] | None = None) -> None:
    """Print (or write) the table of every run under ROOT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="a folder of runs (a hydra multirun folder, or runs/<experiment>)")
    parser.add_argument("--keys", nargs="*", default=[], help="config keys to show, e.g. loss.dmd_weight optim.fake_lr; log.step for the last logged step")
    parser.add_argument("--figures", nargs="*", default=list(DEFAULT_FIGURES), help="metrics.json fields to show")
    parser.add_argument("--samplers", nargs="*", default=None, help="only these metrics.json entries")
    parser.add_argument("--out", type=Path, default=None, help="write the table here instead of printing it")
    parser.add_argument("--plot", default=None, help="KEY:FIG, e.g. loss.guidance_scale:fid (a key of --keys, a figure of --figures)")
    parser.add_argument("--plot-out", type=Path, default=None, help="the plot's PNG (default: ROOT/<FIG>_vs_<KEY>.png)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"ROOT={args.root} is not a folder")
    runs = load_runs(args.root)
    if not runs:
        parser.error(f"no metrics.json under {args.root}")
    rows = sampler_rows(runs, args.keys, args.figures, args.samplers)
    table = markdown_table(rows, ["run", "sampler", *args.keys, *args.figures])
    if args.plot:
        try:
            x_key, y_key = parse_plot(args.plot, args.keys, args.figures)
        except ValueError as err:
            parser.error(str(err))
        print(f"wrote {line_plot(rows, x_key, y_key, args.plot_out or args.root / f'{y_key}_vs_{x_key}.png')}")
    if args.out:
        args.out.write_text(table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
