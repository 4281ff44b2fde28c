"""Write the tables of experiments/review/README.md from the runs of experiments/review/run.sh:
`python experiments/review/collect.py ROOT OUT.md [KEY ...]` (KEY: config keys that tell the runs apart).

One row per run: its student beside its teacher's full sampler in each feature space, FID with its 95% bootstrap
interval, KID, precision and recall, and a verdict per feature space from the intervals alone: "student ahead" or
"student behind" when the intervals do not overlap, else "within error bars"."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from eval.collect import format_cell, full_teacher, last_log_record, load_runs, markdown_table, read_overrides, run_value


def verdict(student: dict, teacher: dict) -> str:
    """Where the student's FID interval lies against the teacher's."""
    (s_lo, s_hi), (t_lo, t_hi) = student["fid_ci95"], teacher["fid_ci95"]
    if s_hi < t_lo:
        return "student ahead"
    return "student behind" if s_lo > t_hi else "within error bars"


def space_cells(prefix: str, student: dict, teacher: dict) -> dict:
    """FID [interval] of student and teacher, KID, precision/recall of the student, and the verdict, in one space."""
    fid_cell = lambda e: f"{format_cell(e['fid'])} {format_cell(e['fid_ci95'])}"  # noqa: E731
    return {
        f"{prefix} student FID [95%]": fid_cell(student), f"{prefix} teacher FID [95%]": fid_cell(teacher),
        f"{prefix} student KID": f"{student['kid']:.4g} ± {student['kid_std']:.2g}",
        f"{prefix} teacher KID": f"{teacher['kid']:.4g} ± {teacher['kid_std']:.2g}",
        f"{prefix} student P / R": f"{student['precision']:.3f} / {student['recall']:.3f}",
        f"{prefix} verdict": verdict(student, teacher),
    }


def distill_run(run: dict) -> dict:
    """A standalone evaluation (python -m eval student_path=RUN/student) speaks for its distillation run: that run's
    config and last log record; a distillation run speaks for itself."""
    student_path = run["config"].get("student_path")
    if not student_path:
        return run
    source = Path(student_path).parent
    return {**run, "config": OmegaConf.to_container(OmegaConf.load(source / "config.yaml")), "overrides": read_overrides(source),
            "last_log": last_log_record(source)}


def rows(root: Path, keys: list[str]) -> list[dict]:
    out = []
    for run in map(distill_run, load_runs(root)):
        metrics = run["metrics"]
        student = next(v for k, v in metrics.items() if k.startswith("student"))
        teacher = metrics[full_teacher(metrics)]
        row = {"run": run["run"], **{k: run_value(run, k) for k in keys}, "updates": run["last_log"].get("step")}
        row |= space_cells("A", student, teacher)
        if "second_extractor" in student:
            row |= space_cells("B", student["second_extractor"], teacher["second_extractor"])
        out.append(row)
    return out


def main(argv: list[str]) -> None:
    root, out, keys = Path(argv[0]), Path(argv[1]), argv[2:]
    table_rows = rows(root, keys)
    columns = list(dict.fromkeys(c for row in table_rows for c in row))
    first = load_runs(root)[0]["metrics"]
    student = next(v for k, v in first.items() if k.startswith("student"))
    spaces = f"A: {student['feature_extractor']}" + (f"; B: {student['second_extractor']['feature_extractor']}" if "second_extractor" in student else "")
    out.write_text(markdown_table(table_rows, columns) + f"\n{student['num_samples']} samples per sampler, seed {student['seed']}; "
                   f"feature spaces {spaces}; reference {student['reference']}. Written by `python experiments/review/collect.py`.\n")
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
