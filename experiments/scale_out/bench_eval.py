"""Issue 36's target: a 2-process evaluation of 2,000 samples against one process, side by side on this machine.

    python experiments/scale_out/bench_eval.py [--num-samples 2000] [--out experiments/scale_out]

Runs `python -m eval` (one process, one thread) and `torchrun --nproc_per_node 2 -m eval` (one thread each) on the
shipped class-conditional teacher and student, the teacher's Heun sampler re-sampled (no cache), one after the other,
and writes bench_eval.json and bench_eval.md: wall seconds of each (interpreter start included), their ratio, and
whether every figure of the two metrics.json files agrees (relative 1e-6)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("fid", "fid_vs_teacher", "fid_torchmetrics", "kid", "precision", "recall", "class_tv")


def overrides(num_samples: int, cache: Path) -> list[str]:
    return ["experiment=demo", "student_path=zoo:mnist_cond_student", f"eval.num_samples={num_samples}",
            "eval.cache_teacher_samples=false", f"eval.cache_dir={cache}"]


def timed(cmd: list[str], run_dir: Path) -> tuple[float, dict]:
    """Wall seconds of one evaluation command, and its metrics.json."""
    start = time.perf_counter()
    done = subprocess.run([*cmd, f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((run_dir / "metrics.json").read_text())


def agree(one: dict, two: dict) -> bool:
    """Every figure of every sampler equal to relative 1e-6, in both feature spaces."""
    pairs = [(one[k], two[k]) for k in one] + [(one[k]["second_extractor"], two[k]["second_extractor"]) for k in one if "second_extractor" in one[k]]
    return all(abs(a[f] - b[f]) <= 1e-6 * max(abs(a[f]), 1e-12) for a, b in pairs for f in FIGURES if f in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "scale_out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args_eval = overrides(args.num_samples, tmp / "cache")
        subprocess.run([sys.executable, "-m", "eval", *args_eval, "eval.num_samples=64", f"hydra.run.dir={tmp / 'warm'}"],
                       cwd=REPO, capture_output=True, check=True)  # reference statistics cached before either is timed
        one_s, one = timed([sys.executable, "-m", "eval", *args_eval], tmp / "one")
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        two_s, two = timed([torchrun, "--nproc_per_node", "2", "-m", "eval", *args_eval], tmp / "two")
    figures = {"num_samples": args.num_samples, "one_process_seconds": one_s, "two_process_seconds": two_s,
               "ratio": two_s / one_s, "figures_agree": agree(one, two), "target_ratio": 0.7,
               "samplers": sorted(one), "student_fid": {"one": one["student_nfe1"]["fid"], "two": two["student_nfe1"]["fid"]}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_eval.json").write_text(json.dumps(figures, indent=2) + "\n")
    table = ["| samples | 1 process (s) | 2 processes (s) | ratio (target <= 0.7) | figures agree (rel 1e-6) |",
             "|---|---|---|---|---|",
             f"| {args.num_samples} | {one_s:.1f} | {two_s:.1f} | {two_s / one_s:.3f} | {figures['figures_agree']} |", "",
             "Written by `python experiments/scale_out/bench_eval.py`: `python -m eval experiment=demo "
             "student_path=zoo:mnist_cond_student eval.cache_teacher_samples=false` (Heun-18, 35 NFE, and the student) "
             "on one process and on two (torchrun), one thread each, one after the other."]
    (args.out / "bench_eval.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
