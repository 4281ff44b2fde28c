"""Write experiments/methods/README.md's table from the runs of experiments/methods/run.sh:
`python experiments/methods/collect.py ROOT OUT.md`.

One row per run: the method (its student terms), the teacher, the seed, SiD's alpha, the student's input noise level,
the Adams' beta1, how the fake score's noise levels were drawn, the real score's guidance and the fake score's (SiD-LSG), the updates made in the budget; in each
feature space the student's FID with its 95% interval beside the teacher's full sampler, the ratio, and recall; the
class TV of student and teacher (their class spread against the reference images'), or prompt accuracy."""
from __future__ import annotations

import sys
from pathlib import Path

from eval.collect import format_cell, full_teacher, load_runs, markdown_table, run_value


def method(run: dict) -> str:
    """The run's student terms with weight > 0, e.g. `dmd + gan_generator`."""
    terms = run["config"]["loss"]["student"]
    return " + ".join(name for name, node in terms.items() if node and node.get("_target_") and node.get("weight", 0) > 0)


def value_or(run: dict, key: str, default):
    """A config value, or what it was before the key existed (runs of earlier commits)."""
    value = run_value(run, key)
    return default if value is None else value


def space(prefix: str, student: dict, teacher: dict) -> dict:
    return {f"{prefix} student FID [95%]": f"{format_cell(student['fid'])} {format_cell(student['fid_ci95'])}",
            f"{prefix} teacher FID [95%]": f"{format_cell(teacher['fid'])} {format_cell(teacher['fid_ci95'])}",
            f"{prefix} ratio": f"{student['fid'] / teacher['fid']:.2f}x",
            f"{prefix} recall (student / teacher)": f"{student['recall']:.3f} / {teacher['recall']:.3f}"}


def row(run: dict) -> dict:
    metrics = run["metrics"]
    student = next(v for k, v in metrics.items() if k.startswith("student"))
    teacher = metrics[full_teacher(metrics)]
    terms = run["config"]["loss"]["student"]
    out = {"run": run["run"], "method": method(run), "teacher": run_value(run, "teacher.path"), "seed": run_value(run, "seed"),
           "alpha": (terms.get("sid") or {}).get("alpha", ""), "sigma_init": (run_value(run, "student.sigmas") or ["sigma_max"])[0],
           "beta1": run_value(run, "optim.betas")[0], "fake sigma draw": value_or(run, "loss.fake_sigma.distribution", "ramp"),
           "guidance": run_value(run, "loss.guidance_scale"), "fake guidance": value_or(run, "loss.fake_guidance_scale", 1.0),
           "updates": run["last_log"].get("step")}
    out |= space("A", student, teacher)
    if "second_extractor" in student:
        out |= space("B", student["second_extractor"], teacher["second_extractor"])
    for key in ("class_tv", "prompt_accuracy"):
        if student.get(key) is not None:
            out[f"{key} (student / teacher)"] = f"{student[key]:.3f} / {teacher[key]:.3f}"
    return out


def main(argv: list[str]) -> None:
    root, out = Path(argv[0]), Path(argv[1])
    runs = load_runs(root)
    rows = [row(run) for run in runs]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    student = next(v for k, v in runs[0]["metrics"].items() if k.startswith("student"))
    out.write_text(markdown_table(rows, columns) + f"\n{student['num_samples']} samples per sampler, seed {student['seed']}; "
                   f"reference {student['reference']}. Written by `python experiments/methods/collect.py`.\n")
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
