"""Write experiments/mnist_sd3/results.md from the runs of experiments/mnist_sd3/run.sh, teacher_check.json and
bench.json: `python experiments/mnist_sd3/collect.py RUN_DIR [RUN_DIR ...]`.

The teacher through stock diffusers; the speed bench (one run, VAE decode on both sides); per run, each feature
space's student FID with its interval beside the teacher's full sampler (flow-matching Euler, 28 steps), recall and
prompt accuracy (experiments/methods/collect.py's row); then issue 34's targets as measured."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from eval.collect import load_runs, markdown_table

HERE = Path(__file__).resolve().parent


def load_script(folder: str, name: str):
    """experiments/<folder>/<name> as a module (methods/collect.py's per-run row, mnist_sd/collect.py's tables)."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name[:-3]}", HERE.parent / folder / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def targets(run: dict) -> dict:
    metrics = run["metrics"]
    student = next(v for k, v in metrics.items() if k.startswith("student"))
    teacher = next(v for k, v in metrics.items() if k.startswith("teacher"))
    out = {"run": run["run"], "A FID ratio (<= 1.5)": f"{student['fid'] / teacher['fid']:.2f}"}
    if "second_extractor" in student:
        out["B FID ratio (<= 1.5)"] = f"{student['second_extractor']['fid'] / teacher['second_extractor']['fid']:.2f}"
    out["prompt accuracy ratio (>= 0.95)"] = f"{student['prompt_accuracy'] / teacher['prompt_accuracy']:.3f}"
    return out


def main(run_dirs: list[str]) -> None:
    lines = ["# The miniature SD3 (zoo:mnist_sd3) and its one-step students", "",
             "Written by `python experiments/mnist_sd3/collect.py " + " ".join(run_dirs) + "`.", ""]
    sd = load_script("mnist_sd", "collect.py")
    lines += sd.teacher_check_lines(HERE / "teacher_check.json") + sd.bench_lines(HERE / "bench.json")
    runs = [run for d in run_dirs for run in load_runs(Path(d))]
    rows = [load_script("methods", "collect.py").row(run) for run in runs]
    lines += ["## One-step students (same seeds and prompts for every sampler)", "",
              markdown_table(rows, list(dict.fromkeys(c for r in rows for c in r))), "## Issue 34's targets", ""]
    goal = [targets(run) for run in runs]
    lines += [markdown_table(goal, list(dict.fromkeys(c for r in goal for c in r)))]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
