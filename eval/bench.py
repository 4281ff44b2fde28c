"""Sampling throughput, student vs the teacher's samplers on the same batch:
`python -m eval.bench TEACHER STUDENT [--samplers heun:18 euler:1] [--batch-size 256] [--repeats 3] [--out FILE]`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from eval.harness import read_student_record, read_student_sigmas, student_label, student_sample_fn, teacher_sample_fns, timed_sampling
from eval.images import draw_inputs
from eval.samplers import SAMPLERS
from eval.run import decoded
from teachers.conditions import Conditions, class_conditions
from teachers.errors import ConfigError
from teachers.guidance import GuidedDenoiser
import teachers


def device_name(device) -> str:
    """The GPU's name, or the CPU's core and thread counts: what the seconds were measured on."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def parse_sampler(text: str) -> dict:
    """'heun:18' -> {'name': 'heun', 'num_steps': 18}; argparse turns the ValueError into a usage error."""
    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"'{text}'; use name:num_steps with name in {', '.join(SAMPLERS)} and num_steps >= 1")
    return {"name": name, "num_steps": int(steps)}


def benchmark(teacher, student, samplers: list[dict], batch_size: int, repeats: int, device,
              student_sigmas: list[float] | None = None, guidance_scale: float = 1.0, prompts: list[str] | None = None,
              center_crop: int | None = None) -> dict[str, dict]:
    """Best-of-repeats seconds per sample of each sampler on one seeded batch, and its throughput vs the student.

    The student samples on its own sigma list (k steps, student_nfe<k>); the teacher with the CFG scale the student
    was distilled with (two network passes per evaluation when guided); speedup_over_nfe divides the speedup by the
    NFE ratio teacher / student, so 1.0 means the student costs exactly its share of network evaluations. A latent
    (text-to-image) teacher's samplers and the student all include the VAE decode, on prompts cycled over the batch."""
    student_fn = student_sample_fn(student, student_sigmas)
    student_key = student_label(student_fn.nfe)
    real = GuidedDenoiser(teacher, guidance_scale) if guidance_scale != 1 else teacher
    fns = {**teacher_sample_fns(real, samplers), student_key: student_fn}
    conditions = class_conditions(teacher.num_classes)
    if teacher.text_conditional:
        chosen = list(prompts or [""])
        conditions = Conditions(teacher.encode_condition(chosen).cpu(), chosen)
    if teacher.latent:
        fns = {label: decoded(fn, teacher, center_crop) for label, fn in fns.items()}
    noise, cond = draw_inputs(batch_size, teacher.shape, conditions, seed=0)
    noise = noise.to(device)
    seconds = {label: min(timed_sampling(fn.fn, noise, batch_size, cond)[1] for _ in range(repeats)) for label, fn in fns.items()}
    speedup = {label: seconds[label] / seconds[student_key] for label in fns}
    name = device_name(device)
    return {
        label: {"nfe": fn.nfe, "seconds_per_sample": seconds[label], "student_speedup": speedup[label], "guidance_scale": guidance_scale,
                "speedup_over_nfe": speedup[label] / (fn.nfe / student_fn.nfe), "batch_size": batch_size, "device": str(device),
                "device_name": name}
        for label, fn in fns.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("teacher", help="teacher folder, zoo:<name> or hub id")
    parser.add_argument("student", help="an exported student/ folder")
    parser.add_argument("--samplers", nargs="+", type=parse_sampler, default=[parse_sampler("heun:18")],
                        help="name:num_steps of the teacher's samplers")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as json here")
    parser.add_argument("--guidance-scale", type=float, default=None, help="the teacher's CFG scale (default: the student's record's)")
    parser.add_argument("--center-crop", type=int, default=None, help="latent teachers: crop decoded images to N x N (as eval.center_crop)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record = read_student_record(args.student)
    try:
        teacher = teachers.load(args.teacher, key="TEACHER").to(device)
        student = teachers.load(args.student, key="STUDENT", family=record.get("family")).to(device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    scale = record.get("guidance_scale", 1.0) if args.guidance_scale is None else args.guidance_scale
    figures = benchmark(teacher, student, args.samplers, args.batch_size, args.repeats, device, read_student_sigmas(args.student),
                        guidance_scale=scale, prompts=record.get("prompts"), center_crop=args.center_crop)
    for label, entry in figures.items():
        print(f"{label:24s} NFE {entry['nfe']:3d}  {1000 * entry['seconds_per_sample']:8.3f} ms/sample  "
              f"student is {entry['student_speedup']:7.2f}x faster ({entry['speedup_over_nfe']:.2f} x NFE)")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
