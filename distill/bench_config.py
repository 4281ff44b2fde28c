"""`python -m distill.bench_config [--repeats N] [--out FILE]`: how fast the entry points refuse a bad config and
answer `--help` and `--cfg job`, against `python -c "import torch"` timed beside them (best of N each, one process at
a time). Issue 38's target: a bad config refused within 1.5x `import torch`. Writes bench_config.json."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

BAD = "bad config"
CASES = [  # (name, argv after python, what the entry point must do: exit 2 for a refusal, 0 for an answer)
    ("import torch", ["-c", "import torch"], 0),
    ("toy weights sum to 1.3", ["-m", "distill", "experiment=toy_gmm", "data.weights=[0.7,0.6]", "data.means=[[0,0],[1,1]]",
                                "data.stds=[0.1,0.1]"], 2),
    ("demo: unknown key data.weights", ["-m", "distill", "data.weights=[0.7,0.6]"], 2),
    ("demo: train.batch_size=0", ["-m", "distill", "train.batch_size=0"], 2),
    ("demo: loss.sigma.min below the teacher's", ["-m", "distill", "loss.sigma.min=1e-5"], 2),
    ("demo: wrong type train.max_steps=many", ["-m", "distill", "train.max_steps=many"], 2),
    ("distill --help", ["-m", "distill", "--help"], 0),
    ("distill --cfg job", ["-m", "distill", "--cfg", "job"], 0),
    ("eval --cfg job", ["-m", "eval", "--cfg", "job"], 0),
    ("teachers.train --cfg job", ["-m", "teachers.train", "--cfg", "job"], 0),
]


def best_seconds(argv: list[str], expected_code: int, repeats: int, run_dir: Path) -> tuple[float, str]:
    """The fastest of `repeats` runs of `python argv`; each must exit with expected_code (a refusal that trained
    instead would time the wrong thing)."""
    best, stderr = float("inf"), ""
    extra = [f"hydra.run.dir={run_dir}"] if argv[0] == "-m" and "--cfg" not in argv and "--help" not in argv else []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv, *extra], capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - start
        if done.returncode != expected_code:
            raise SystemExit(f"`python {' '.join(argv)}` exited {done.returncode}, not {expected_code}:\n{done.stderr[-2000:]}")
        best, stderr = min(best, seconds), done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    return best, stderr


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_config.json"))
    args = parser.parse_args(argv)
    run_dir = args.out.parent / "bench_config_run"
    rows = []
    for name, case_argv, code in CASES:
        seconds, said = best_seconds(case_argv, code, args.repeats, run_dir)
        rows.append({"case": name, "command": "python " + " ".join(case_argv), "seconds": round(seconds, 3), "exit": code,
                     "stderr_last_line": said})
    torch_s = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_import_torch"] = round(row["seconds"] / torch_s, 3)
    result = {"repeats": args.repeats, "python": platform.python_version(), "machine": platform.machine(),
              "target_ratio": 1.5, "worst_ratio": max(r["ratio_to_import_torch"] for r in rows[1:]), "rows": rows}
    print(f"{'case':45s} {'best s':>7s} {'x torch':>8s}")
    for row in rows:
        print(f"{row['case']:45s} {row['seconds']:7.2f} {row['ratio_to_import_torch']:8.2f}")
    print(f"worst ratio {result['worst_ratio']:.2f} (target <= 1.5)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
