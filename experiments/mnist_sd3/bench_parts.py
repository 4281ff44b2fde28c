"""Where the time of zoo:mnist_sd3's samplers goes: one network evaluation of the student (unguided), one of the guided
teacher (both CFG branches as one batch), and one VAE decode, each at batch 250, median of 5 after a warm-up.

    python experiments/mnist_sd3/bench_parts.py [--student runs/sd3/dmd2_seed0/student]

Writes experiments/mnist_sd3/bench_parts.json: with the decode included on both sides, the student's speed-up over
the 28-step teacher is (28 g + d) / (s + d), which tends to 28 g / d, not 28, when the decode d dominates."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import teachers
from teachers.guidance import GuidedDenoiser

OUT = Path(__file__).resolve().parent / "bench_parts.json"


def median_seconds(fn, repeats: int = 5) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="runs/sd3/dmd2_seed0/student")
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    teacher = teachers.load("zoo:mnist_sd3")
    student = teachers.load(args.student, key="student")
    guided = GuidedDenoiser(teacher, 2.0)
    cond = teacher.encode_condition(["a handwritten seven"] * args.batch_size)
    z = torch.randn(args.batch_size, *teacher.shape)
    sigma = torch.full((args.batch_size,), 3.0)
    parts = {"student_eval": median_seconds(lambda: student(z, sigma, cond)),
             "guided_teacher_eval": median_seconds(lambda: guided(z, sigma, cond)),
             "vae_decode": median_seconds(lambda: teacher.decode(z))}
    per_image = {k: v / args.batch_size for k, v in parts.items()}
    g, s, d = per_image["guided_teacher_eval"], per_image["student_eval"], per_image["vae_decode"]
    report = {"batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "seconds_per_image": per_image,
              "speedup_with_decode": (28 * g + d) / (s + d), "speedup_without_decode": 28 * g / s}
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
