"""`python -m distill.bench_train [PRESET ...]`: where a distillation step's time goes.

For each experiment preset, at its batch size, in one process: the whole step as the loop runs it (N fake-score
updates, one student update, the EMA; logging is off its due steps) and each part alone on the same networks and
batch, timed in rounds (the step, then each part, per round; medians); the step against the sum of its parts (the
rest is the loop's overhead: noise draws, losses, clipping, bookkeeping), peak memory and student updates per second.
Writes bench_train.json and bench_train.md."""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from distill.build import Prepared, prepare
from distill.gan import frozen
from distill.steps import distill_step
from distill.terms import combined_needs
from teachers.base import expand_sigma
from teachers.cli import CONFIG_DIR

PRESETS = ("toy_gmm", "mnist", "mnist_dmd2_fast", "mnist_dmd2_4step", "mnist_sd_dmd2", "mnist_sid")
STEP = "whole step"
# The pairs only feed the regression batch: a few, cheaply made, do not change a step's cost.
SETUP = ["loss.pairs.num_pairs=512", "loss.pairs.num_steps=2", "train.ema_decay=0.99"]


@dataclass(frozen=True)
class Part:
    """One piece of a step: how to run it once, and how many times a step runs it."""

    name: str
    fn: Callable[[], object]
    per_step: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall milliseconds of one fn() call (CUDA work waited for)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median wall milliseconds of each fn, timed in rounds (each fn once per round, in turn): a machine whose speed
    drifts over the minutes of a benchmark (a shared CPU's neighbours, clocks) slows every fn alike, instead of
    whichever was timed in the slow minutes."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(wall_ms(fn, device))
    return {name: float(np.median(t)) for name, t in times.items()}


def step_fn(p: Prepared) -> Callable[[], None]:
    """One step as the loop runs it: distill_step, then the EMA."""
    def step():
        distill_step(p.distiller, p.guard, p.counters)
        if p.state.ema is not None:
            p.state.ema.step(p.state.student.parameters())
    return step


def backward(output: torch.Tensor) -> None:
    """A backward pass of a scalar that depends on every output element (the loss's own math is overhead)."""
    output.float().square().mean().backward()


def parts(p: Prepared) -> list[Part]:
    """The parts of a step on the run's own networks and batch, each with its count per step."""
    d, state, s = p.distiller, p.state, p.distiller.settings
    needs = combined_needs(d.student_terms)
    n, m = s.batch_size, s.regression_batch_size if needs.pairs else 0
    n_fake = s.num_fake_steps_per_student_step if d.trains_fake_score else 0
    fresh = n_fake - (1 if s.reuse_student_samples and n_fake else 0)  # fake updates that draw G(z) anew
    student, critic, real, gen, draws = state.student, d.nets.critic, d.nets.real, p.plain_generator, d.draws
    z, cond, steps = draws.z(n + m), draws.cond(n + m), draws.steps(n + m)
    with torch.no_grad():
        x_in, sigma_in = gen.backward_simulation(z, steps, cond) if steps is not None else (gen.denoiser.student_input(z, gen.sigmas[0]), z.new_full((n + m,), gen.sigmas[0]))
        x = student(x_in[:n], sigma_in[:n], None if cond is None else cond[:n])
    c = None if cond is None else cond[:n]
    sigma = draws.sigma(n, None if steps is None else steps[:n])
    x_t = x + expand_sigma(sigma, x) * torch.randn_like(x)
    found = [
        Part("student forward (no grad)", lambda: _no_grad(student, x_in[:n], sigma_in[:n], c), fresh),
        Part("student forward + backward", lambda: backward(student(x_in, sigma_in, cond)), 1),
        Part("fake-score forward + backward", lambda: backward(critic(x_t, sigma, c)), n_fake),
        Part("fake-score optimizer step", d.fake_optimizer.step, n_fake),
        Part("student optimizer step", d.student_optimizer.step, 1),
    ]
    if needs.fake and not needs.through_scores:  # DMD: both scores read without gradients
        found += [Part("teacher forward", lambda: _no_grad(real, x_t, sigma, c), 1),
                  Part("fake-score forward", lambda: _no_grad(critic, x_t, sigma, c), 1)]
    if needs.through_scores:  # SiD: both scores' backward into their inputs (weights frozen)
        found += [Part("teacher forward + backward to its input", lambda: _input_backward(real, x_t, sigma, c), 1),
                  Part("fake-score forward + backward to its input", lambda: _input_backward(critic, x_t, sigma, c), 1)]
    if steps is not None:
        found.append(Part("backward simulation", lambda: gen.backward_simulation(z[:n], steps[:n], c), fresh + 1))
    if needs.critic:
        pair = torch.cat([x_t, x_t])
        pair_sigma, pair_cond = torch.cat([sigma, sigma]), None if c is None else torch.cat([c, c])
        found += [Part("GAN classifier forward + backward (discriminator)", lambda: backward(critic.logits(pair, pair_sigma, pair_cond)), n_fake),
                  Part("GAN classifier forward + backward (generator)", lambda: backward(critic.logits(x_t.requires_grad_(), sigma, c)), 1)]
    if state.ema is not None:
        found.append(Part("EMA update", lambda: state.ema.step(student.parameters()), 1))
    return [part for part in found if part.per_step > 0]


def _input_backward(module, x_t: torch.Tensor, sigma, cond) -> None:
    """A forward and a backward into x_t only, the module's weights frozen (as SiD's student update reads a score)."""
    with frozen(module):
        backward(module(x_t.detach().requires_grad_(), sigma, cond))


def _no_grad(module, *args):
    with torch.no_grad():
        return module(*args)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocated on a GPU; else the process's peak resident memory (Linux ru_maxrss, KB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_preset(preset: str, extra: list[str], repeats: int, run_dir: Path) -> dict:
    """The step and its parts for one preset."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}", f"run_dir={run_dir}", *SETUP, *extra])
    p = prepare(cfg)
    device = p.accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    found = parts(p)
    ms = interleaved_ms({STEP: step_fn(p)} | {part.name: part.fn for part in found}, repeats, device)
    step_ms, timed = ms[STEP], {part.name: {"ms": ms[part.name], "per_step": part.per_step} for part in found}
    for optimizer in (p.distiller.student_optimizer, p.distiller.fake_optimizer):
        optimizer.zero_grad(set_to_none=True)  # the parts' gradients are not a training state
    sum_ms = sum(v["ms"] * v["per_step"] for v in timed.values())
    return {"preset": preset, "overrides": extra, "batch_size": cfg.train.batch_size, "fake_steps_per_student_step": cfg.train.num_fake_steps_per_student_step,
            "student_steps": cfg.student.num_steps, "device": str(device), "step_ms": step_ms, "parts": timed, "sum_of_parts_ms": sum_ms,
            "step_over_sum": step_ms / sum_ms, "overhead_ms": step_ms - sum_ms, "student_updates_per_s": 1000 / step_ms,
            "peak_memory_mb": peak_memory_mb(device)}


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Training step benchmark", "", f"Written by `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{torch.get_num_threads()} torch threads). Medians of repeated calls; a part's total is its time times its count per step.", ""]
    for r in results:
        lines += [f"## {r['preset']} (batch {r['batch_size']}, {r['fake_steps_per_student_step']} fake-score updates per student update, "
                  f"{r['student_steps']}-step student, {r['device']})", "", "| part | ms | per step | ms per step |", "|---|---|---|---|"]
        lines += [f"| {name} | {v['ms']:.2f} | {v['per_step']} | {v['ms'] * v['per_step']:.2f} |" for name, v in r["parts"].items()]
        lines += [f"| **sum of parts** | | | {r['sum_of_parts_ms']:.2f} |", f"| **whole step** | | | {r['step_ms']:.2f} |", "",
                  f"Step / sum of parts: **{r['step_over_sum']:.3f}** (overhead {r['overhead_ms']:.2f} ms); "
                  f"{r['student_updates_per_s']:.2f} student updates/s; peak memory {r['peak_memory_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill.bench_train", description=__doc__)
    parser.add_argument("presets", nargs="*", default=list(PRESETS), help=f"experiment presets (default: {' '.join(PRESETS)})")
    parser.add_argument("--override", action="append", default=[], help="a hydra override for every preset (repeatable)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="experiments/speed", help="folder for bench_train.json and bench_train.md")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            result = bench_preset(preset, args.override, args.repeats, Path(tmp) / preset)
            print(f"{preset}: step {result['step_ms']:.1f} ms, sum of parts {result['sum_of_parts_ms']:.1f} ms ({result['step_over_sum']:.3f}x)", flush=True)
            results.append(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m distill.bench_train " + " ".join(args.presets + [f"--override {o}" for o in args.override])
    (out / "bench_train.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_train.md").write_text(markdown(results, command))
    return results


if __name__ == "__main__":
    main()
