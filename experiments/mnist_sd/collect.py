"""Write experiments/mnist_sd/results.md from the distillation runs of experiments/mnist_sd/run.sh and from
teacher_check.json: `python experiments/mnist_sd/collect.py RUN_DIR [RUN_DIR ...]`.

Per run: every sampler's domain FID (shipped MNIST classifier, with its 95% bootstrap interval), FID against the
teacher's full sampler, prompt accuracy, seconds per image (VAE decode included) and the student's speed-up beside the
NFE ratio; then the targets of issue 24 as measured."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def overrides(run_dir: Path) -> str:
    """The command-line overrides hydra recorded for the run."""
    path = run_dir / ".hydra" / "overrides.yaml"
    return " ".join(OmegaConf.load(path)) if path.is_file() else "?"


def run_rows(run_dir: Path) -> tuple[list[str], dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = OmegaConf.load(run_dir / "config.yaml")
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    updates = max((r.get("step", 0) for r in log), default=0)
    minutes = max((r.get("time/train_minutes", 0.0) for r in log), default=0.0)
    teacher = max((k for k in metrics if k.startswith("teacher_")), key=lambda k: metrics[k]["nfe"])
    student = next(k for k in metrics if k.startswith("student_"))
    rows = []
    for label in sorted(metrics, key=lambda k: metrics[k]["nfe"]):
        e = metrics[label]
        speedup = metrics[label]["seconds_per_sample"] / metrics[student]["seconds_per_sample"]
        rows.append(f"| {run_dir.name} | {label} | {e['nfe']} | {fmt(e['fid'])} {fmt(e.get('fid_ci95', ''))} | {fmt(e['fid_vs_teacher'])} | "
                    f"{fmt(e.get('prompt_accuracy'))} | {1000 * e['seconds_per_sample']:.2f} | {speedup:.2f}x |")
    s, t = metrics[student], metrics[teacher]
    summary = {
        "run": run_dir.name, "experiment": overrides(run_dir), "updates": updates, "train_minutes": round(minutes, 1),
        "guidance_scale": cfg.loss.guidance_scale, "num_samples": s["num_samples"],
        "fid_ratio": s["fid"] / t["fid"], "accuracy_gap_points": 100 * (t["prompt_accuracy"] - s["prompt_accuracy"]),
        "speedup_over_nfe_ratio": (t["seconds_per_sample"] / s["seconds_per_sample"]) / (t["nfe"] / s["nfe"]),
    }
    return rows, summary


def teacher_check_lines(check: Path) -> list[str]:
    """The teacher-through-stock-diffusers table of teacher_check.json (none when it is absent)."""
    if not check.is_file():
        return []
    data = json.loads(check.read_text())
    lines = [f"## The teacher through stock diffusers ({data['steps']}-step {data['scheduler']}, {data['num_images']} images)", "",
             "| guidance scale | prompt accuracy | ms / image |", "|---|---|---|"]
    lines += [f"| {scale} | {row['prompt_accuracy']:.3f} | {1000 * row['seconds_per_image']:.1f} |" for scale, row in data["by_guidance_scale"].items()]
    return lines + [""]


def bench_lines(bench: Path) -> list[str]:
    """The speed table of an eval.bench json (none when it is absent)."""
    if not bench.is_file():
        return []
    data = json.loads(bench.read_text())
    lines = ["## Speed in one run (`python -m eval.bench`, VAE decode included, the teacher guided as the student was distilled)", "",
             "| sampler | NFE | ms / image | student speed-up | speed-up / NFE ratio (>= 0.8) | batch | device |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {label} | {e['nfe']} | {1000 * e['seconds_per_sample']:.2f} | {e['student_speedup']:.2f}x | {e['speedup_over_nfe']:.2f} | "
              f"{e['batch_size']} | {e['device_name']} |" for label, e in data.items()]
    return lines + [""]


def main(run_dirs: list[str]) -> None:
    lines = ["# The miniature Stable Diffusion (zoo:mnist_sd) and its one-step students", "",
             "Written by `python experiments/mnist_sd/collect.py " + " ".join(run_dirs) + "`.", ""]
    lines += teacher_check_lines(HERE / "teacher_check.json") + bench_lines(HERE / "bench.json")
    lines += ["## Distillation runs (same seeds and prompts for every sampler)", "",
              "| run | sampler | NFE | domain FID [95%] | FID vs teacher | prompt accuracy | ms / image (decode incl.) | student speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    summaries = []
    for run_dir in run_dirs:
        rows, summary = run_rows(Path(run_dir))
        lines += rows
        summaries.append(summary)
    lines += ["", "## Issue 24's targets", "", "| run | overrides | updates | minutes | CFG | FID student / teacher (<= 1.2) | "
              "accuracy gap, points (<= 3) | speed-up / NFE ratio (>= 0.8; timings from separate processes, see the bench above) |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['run']} | {s['experiment']} | {s['updates']} | {s['train_minutes']} | {s['guidance_scale']} | "
                     f"{s['fid_ratio']:.2f} | {s['accuracy_gap_points']:.1f} | {s['speedup_over_nfe_ratio']:.2f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
