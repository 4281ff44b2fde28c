"""Collect runs' metrics.json files into a markdown table: `python -m eval.collect ROOT [--out FILE]`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

DEFAULT_FIGURES = ("nfe", "fd", "mmd", "mode_recall", "mode_weight_error", "off_mode_share")


def load_runs(root: Path) -> list[dict]:
    """Every run under root that has a metrics.json: {'run', 'config', 'metrics'}, sorted by path."""
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        cfg_path = path.parent / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(cfg_path)) if cfg_path.exists() else {}
        runs.append({"run": path.parent.relative_to(root).as_posix(), "config": config, "metrics": json.loads(path.read_text())})
    return runs


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
                row = {"run": run["run"], "sampler": sampler, **{k: config_value(run["config"], k) for k in keys}}
                rows.append(row | {f: entry.get(f) for f in figures})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print (or write) the table of every run under ROOT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="a folder of runs (a hydra multirun folder, or runs/<experiment>)")
    parser.add_argument("--keys", nargs="*", default=[], help="config keys to show, e.g. loss.dmd_weight optim.fake_lr")
    parser.add_argument("--figures", nargs="*", default=list(DEFAULT_FIGURES), help="metrics.json fields to show")
    parser.add_argument("--samplers", nargs="*", default=None, help="only these metrics.json entries")
    parser.add_argument("--out", type=Path, default=None, help="write the table here instead of printing it")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"ROOT={args.root} is not a folder")
    runs = load_runs(args.root)
    if not runs:
        parser.error(f"no metrics.json under {args.root}")
    table = markdown_table(sampler_rows(runs, args.keys, args.figures, args.samplers), ["run", "sampler", *args.keys, *args.figures])
    if args.out:
        args.out.write_text(table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
