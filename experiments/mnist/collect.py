"""Write the table of RESULTS/README.md (default experiments/mnist; and copy the sample sheet) from the outputs of run.sh:
`python experiments/mnist/collect.py OUT [RESULTS]`."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from eval.collect import full_teacher, last_log_record, markdown_table

HERE = Path(__file__).resolve().parent
START, END = "<!-- table:start -->", "<!-- table:end -->"


def rows_for(metrics: dict) -> list[dict]:
    """One row per sampler, teacher by NFE then the student; FID ratios and speed against the full sampler."""
    full = full_teacher(metrics)
    order = sorted(metrics, key=lambda k: (k.startswith("student"), metrics[k]["nfe"]))
    rows = []
    for label in order:
        entry = metrics[label]
        rows.append({
            "sampler": label, "NFE": entry["nfe"], "FID": entry["fid"], "FID (torchmetrics)": entry.get("fid_torchmetrics"),
            "FID / full teacher FID": entry["fid"] / metrics[full]["fid"], "FID vs full teacher": entry["fid_vs_teacher"],
            "ms / sample": 1000 * entry["seconds_per_sample"],
            "speedup vs full teacher": metrics[full]["seconds_per_sample"] / entry["seconds_per_sample"],
        })
    return rows


def target_lines(metrics: dict, wall_file: Path, bench_file: Path) -> list[str]:
    """The issue's targets, checked from the figures."""
    student = metrics[next(k for k in metrics if k.startswith("student_"))]  # student_nfe<k>
    teacher = metrics[full_teacher(metrics)]
    ratio = student["fid"] / teacher["fid"]
    speed = teacher["seconds_per_sample"] / student["seconds_per_sample"]
    lines = [
        f"- student ({student['nfe']} NFE) FID {student['fid']:.4g} = {ratio:.3g}x the full teacher's {teacher['fid']:.4g} "
        f"({'met' if ratio <= 1.2 else 'NOT met'}, target <= 1.2x)",
        f"- throughput in this evaluation run: student {speed:.3g}x the full teacher ({teacher['nfe']} NFE)",
    ]
    if bench_file.is_file():  # python -m eval.bench: one batch, best of repeats, nothing else running
        bench = json.loads(bench_file.read_text())
        b = bench[full_teacher(bench)]
        lines.append(f"- throughput from `eval.bench` (batch {b['batch_size']}, {b['device']}): student {b['student_speedup']:.3g}x "
                     f"the full teacher = {b['speedup_over_nfe']:.2f} x NFE; target >= 0.8 x NFE: "
                     f"{'met' if b['speedup_over_nfe'] >= 0.8 else 'NOT met'}")
    if wall_file.is_file():
        last = last_log_record(wall_file.parent)
        loop = f"; training loop {last['time/train_minutes']:.1f} min" if "time/train_minutes" in last else ""
        lines.append(f"- `python -m distill` wall time: {int(wall_file.read_text()) / 60:.1f} min for {last['step']} steps{loop} "
                     "(the wall time includes its own evaluation, and the teacher ODE pairs unless the run dir has them); "
                     "target: within 30 min")
    return lines


def main(out: Path, results: Path = HERE) -> None:
    """Rewrite the table between the markers of RESULTS/README.md (made if absent); copy the teacher | student sheet."""
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    rows = rows_for(metrics)
    columns = list(rows[0])
    accuracy = next(iter(metrics.values())).get("classifier_test_accuracy")
    body = "\n".join([
        markdown_table(rows, columns), "",
        f"{next(iter(metrics.values()))['num_samples']} samples per sampler, seed {next(iter(metrics.values()))['seed']}; "
        f"features: {next(iter(metrics.values()))['feature_extractor']} (held-out accuracy {accuracy:.4g}); "
        f"reference: {next(iter(metrics.values()))['reference']}.", "",
        *target_lines(metrics, out / "distill" / "wall_seconds.txt", results / "bench.json"),
    ])
    readme = results / "README.md"
    text = readme.read_text() if readme.is_file() else f"# MNIST: the run in {out}\n\n{START}\n{END}\n"
    readme.write_text(re.sub(f"{re.escape(START)}.*{re.escape(END)}", lambda _: f"{START}\n{body}\n{END}", text, flags=re.S))
    shutil.copy(out / "eval" / "grids" / "teacher_student.png", results / "teacher_student.png")
    print(body)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/mnist"), Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
