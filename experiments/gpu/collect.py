"""Write the table of experiments/gpu/README.md from the GPU runs (experiments/gpu/run.sh) once each student has an
eval/metrics.json, and from the GPU throughput files bench_<experiment>_b<batch>.json (python -m eval.bench --out):
`python experiments/gpu/collect.py RUNS [RESULTS=experiments/gpu]`."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from eval.collect import full_teacher, last_log_record, markdown_table

HERE = Path(__file__).resolve().parent
START, END = "<!-- table:start -->", "<!-- table:end -->"


def fid_rows(runs: Path) -> tuple[list[dict], str]:
    """One row per run: steps and training minutes from train_log.jsonl, the student's FID against the full teacher's.

    The full teacher is the sampler with the most NFE in any run's metrics.json (every run uses the same seeds,
    features and reference, so one evaluation of the teacher serves all)."""
    evaluated = {p.parent.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/eval/metrics.json"))}
    if not evaluated:
        raise SystemExit(f"no {runs}/*/eval/metrics.json: evaluate the students first (experiments/gpu/README.md)")
    teacher = max((m[full_teacher(m)] | {"label": full_teacher(m)} for m in evaluated.values()), key=lambda e: e["nfe"])
    rows = []
    for name, metrics in evaluated.items():
        student = metrics[next(k for k in metrics if k.startswith("student_"))]
        last = last_log_record(runs / name / "distill")
        rows.append({
            "experiment": name, "student NFE": student["nfe"], "student updates": last["step"],
            "training minutes": last.get("time/train_minutes"), "FID": student["fid"],
            "FID / full teacher FID": student["fid"] / teacher["fid"],
        })
    note = (f"Full teacher: {teacher['label']} FID {teacher['fid']:.4g} ({teacher['num_samples']} samples, seed {teacher['seed']}, "
            f"{teacher['feature_extractor']}).")
    return rows, note


def bench_rows(results: Path) -> list[dict]:
    """One row per bench file: the student against the teacher's full sampler on one batch."""
    rows = []
    for path in sorted(results.glob("bench_*.json")):
        figures = json.loads(path.read_text())
        teacher_label = full_teacher(figures)
        full, student_label = figures[teacher_label], next(k for k in figures if k.startswith("student_"))
        rows.append({
            "file": path.name, "device": full["device"], "batch": full["batch_size"], "student": student_label,
            "student ms / sample": 1000 * figures[student_label]["seconds_per_sample"],
            "teacher": teacher_label, "teacher ms / sample": 1000 * full["seconds_per_sample"],
            "speedup": full["student_speedup"], "speedup / NFE ratio": full["speedup_over_nfe"],
        })
    return rows


def main(runs: Path, results: Path = HERE) -> None:
    """Rewrite the tables between the markers of RESULTS/README.md."""
    rows, note = fid_rows(runs)
    parts = [markdown_table(rows, list(rows[0])).rstrip(), "", note]
    bench = bench_rows(results)
    if bench:
        parts += ["", markdown_table(bench, list(bench[0]))]
    body = "\n".join(parts)
    readme = results / "README.md"
    text = readme.read_text() if readme.is_file() else f"# GPU runs\n\n{START}\n{END}\n"
    readme.write_text(re.sub(f"{re.escape(START)}.*{re.escape(END)}", lambda _: f"{START}\n{body}\n{END}", text, flags=re.S))
    print(body)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/gpu"), Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
