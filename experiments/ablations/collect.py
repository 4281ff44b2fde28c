"""Write experiments/ablations/README.md's tables and plots from the sweep folders run.sh made.

    python experiments/ablations/collect.py [OUT=runs/ablations]

run.sh makes the chain, steps and guidance sweeps; budget.sh the equal-wall-clock runs.

The tables and the plots come from eval.collect (the same as `python -m eval.collect` on each sweep folder).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from eval.collect import load_runs, markdown_table, run_value
from eval.plots import line_plot

HERE = Path(__file__).resolve().parent
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
TEACHER = "teacher_heun_nfe35"


def rows_of(root: Path, keys: list[str]) -> list[dict]:
    """One row per run: its keys, the student's FID and FID vs the teacher, the teacher's FID, the ratio."""
    rows = []
    for run in load_runs(root):
        metrics = run["metrics"]
        student = next(k for k in metrics if k.startswith("student"))
        fid, teacher_fid = metrics[student]["fid"], metrics[TEACHER]["fid"]
        rows.append({
            **{k: run_value(run, k) for k in keys}, "sampler": student, "NFE": metrics[student]["nfe"], "fid": fid,
            "fid_vs_teacher": metrics[student]["fid_vs_teacher"], "teacher FID (35 NFE)": teacher_fid,
            "student / teacher FID": fid / teacher_fid, "steps": run["config"]["train"]["max_steps"],
        })
    return rows


def section(title: str, rows: list[dict], plot_key: str | None, note: str) -> list[str]:
    """A markdown section with a table and, if asked, its FID plot."""
    if not rows:
        return [f"### {title}", "", "(no runs yet)", ""]
    lines = [f"### {title}", "", markdown_table(rows, list(rows[0])), note, ""]
    if plot_key:
        png = line_plot(rows, plot_key, "fid", HERE / f"fid_vs_{plot_key.split('.')[-1]}.png")
        lines += [f"![FID vs {plot_key}]({png.name})", ""]
    return lines


def rows_in(root: Path, keys: list[str]) -> list[dict]:
    return rows_of(root, keys) if root.is_dir() else []


def budget_rows(root: Path, teacher_fid: float | None) -> list[dict]:
    """One row per budget.sh run: the steps and minutes it reached, the student's FID, the ratio to the chain's teacher."""
    rows = []
    for run in load_runs(root) if root.is_dir() else []:
        student = next(k for k in run["metrics"] if k.startswith("student"))
        fid, last = run["metrics"][student]["fid"], run["last_log"]
        rows.append({
            "run": run["run"], "steps reached": last["step"], "train minutes": last["time/train_minutes"],
            "batch": run["config"]["train"]["batch_size"], "fake updates / step": run["config"]["train"]["num_fake_steps_per_student_step"],
            "fake lr": run["config"]["optim"]["fake_lr"],
            "fid": fid, "student / teacher FID": fid / teacher_fid if teacher_fid else None,
        })
    return rows


def main(out: Path) -> None:
    chain = rows_in(out / "chain", ["experiment"])
    steps = [r for r in chain if r["experiment"] == "mnist_dmd2"] + rows_in(out / "steps", ["experiment"])
    teacher_fid = chain[0]["teacher FID (35 NFE)"] if chain else None  # the same 1,000 seeds in every run
    body = [
        *section("DMD2 ablation chain (1-step students)", chain, "experiment",
                 "DMD -> no regression -> + two time-scale updates (5 fake-score updates per student update) -> + GAN (= DMD2)."),
        *section("1 step vs 4 steps (DMD2 preset)", steps, None,
                 "The 1-step row is the chain's mnist_dmd2 run; the 4-step student is trained with backward simulation."),
        *section("Guidance scale (class-conditional teacher, DMD + regression)", rows_in(out / "guidance", ["loss.guidance_scale"]),
                 "loss.guidance_scale", "FID against the unconditional training split, labels drawn uniformly. The teacher column is the "
                 "teacher sampled with the same guidance (the real score the student matches)."),
        *section("Equal wall-clock budget (budget.sh)", budget_rows(out / "budget", teacher_fid), None,
                 "Each run trains until train.max_minutes (one core each, two runs at a time); the ratio is against the "
                 "chain's teacher FID on the same 1,000 seeds."),
    ]
    readme = HERE / "README.md"
    text = "\n".join(body).rstrip() + "\n"
    readme.write_text(re.sub(f"{re.escape(START)}.*{re.escape(END)}", lambda _: f"{START}\n{text}{END}", readme.read_text(), flags=re.S))
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/ablations"))
