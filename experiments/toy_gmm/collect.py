"""Write experiments/toy_gmm/README.md's table (and copy the sample sheets) from runs of run.sh."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from eval.collect import load_runs, markdown_table

HERE = Path(__file__).resolve().parent
MIXTURES = {"toy_gmm": "ring8 (2-D, 8 modes)", "toy_grid25": "grid25 (2-D, 25 modes)", "toy_16d": "gmm16d (16-D, 8 modes)"}
STUDENTS = {"dmd": "student, DMD only", "regression": "student, regression only", "dmd_regression": "student, DMD + regression"}
FIGURES = ["fd", "mmd", "mode_recall", "mode_weight_error", "off_mode_share"]
START, END = "<!-- table:start -->", "<!-- table:end -->"


def rows_for(mixture: str, runs: dict[str, dict]) -> list[dict]:
    """data and teacher rows (from the DMD + regression run; all share them), then one row per student."""
    base = runs["dmd_regression"]["metrics"]
    teacher_label = next(k for k in base if k.startswith("teacher_"))
    teacher = base[teacher_label]
    rows = []
    for label, entry in (("fresh data (noise floor)", base["data"]), (f"teacher, {teacher_label}", teacher)):
        rows.append({"mixture": MIXTURES[mixture], "sampler": label, "NFE": entry["nfe"], **{f: entry[f] for f in FIGURES}})
    for loss, name in STUDENTS.items():
        entry = runs[loss]["metrics"]["student_nfe1"]
        row = {"mixture": MIXTURES[mixture], "sampler": name, "NFE": 1, **{f: entry[f] for f in FIGURES}}
        row["fd / teacher fd"] = entry["fd"] / teacher["fd"]
        row["speedup"] = teacher["seconds_per_sample"] / entry["seconds_per_sample"]
        rows.append(row)
    return rows


def target_lines(mixture: str, rows: list[dict]) -> str:
    """The issue's targets for DMD + regression, checked from the figures."""
    teacher, student = rows[1], rows[-1]
    recall_ok = student["mode_recall"] == teacher["mode_recall"]
    fd_ok = student["fd / teacher fd"] <= 1.5
    return (f"- {MIXTURES[mixture]}: mode_recall {student['mode_recall']:.3g} vs teacher {teacher['mode_recall']:.3g} "
            f"({'met' if recall_ok else 'NOT met'}); fd {student['fd / teacher fd']:.3g}x the teacher's "
            f"({'met' if fd_ok else 'NOT met'}, target <= 1.5x)")


def main(out: Path) -> None:
    """Rewrite the table between the markers of README.md; copy each mixture's sample sheet."""
    runs: dict[str, dict[str, dict]] = {}
    for run in load_runs(out):
        mixture, _, loss = run["run"].partition("/")
        runs.setdefault(mixture, {})[loss] = run
    all_rows, targets = [], []
    for mixture in MIXTURES:
        if mixture not in runs:
            continue
        rows = rows_for(mixture, runs[mixture])
        all_rows += rows
        targets.append(target_lines(mixture, rows))
        for loss in STUDENTS:
            shutil.copy(out / mixture / loss / "grids" / "data_teacher_student.png", HERE / f"{mixture}_{loss}.png")
    columns = ["mixture", "sampler", "NFE", *FIGURES, "fd / teacher fd", "speedup"]
    block = f"{START}\n{markdown_table(all_rows, columns)}\nTargets (DMD + regression):\n" + "\n".join(targets) + f"\n{END}"
    readme = HERE / "README.md"
    text = readme.read_text()
    readme.write_text(re.sub(re.escape(START) + ".*" + re.escape(END), lambda _: block, text, flags=re.S))
    print(block)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/toy_gmm"))
