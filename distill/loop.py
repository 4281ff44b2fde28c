"""The distillation run: accelerate orchestration only; the math lives in steps and losses."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from distill.build import Prepared, prepare
from distill.checkpoint import last_sealed_note
from distill.export import export_student, record_prompts, student_record, write_model_card
from distill.guard import EXIT_SIGTERM, StopRequest, TimeBudget, any_process
from distill.generator import trainable_copy
from distill.logger import ScalarLog
from distill.sharding import whole_student
from distill.schedule import budget_progress, lr_factor, set_lr_factor
from distill.state import Counters, save_training_state
from distill.steps import Draws, distill_step, scalars
from distill.summary import summary_lines
from distill.tasks import PLOT_SAMPLES
from eval.shard import Shard
from teachers.errors import TrainingStopped
import teachers

__all__ = ["Prepared", "prepare", "run"]  # the run's builders, re-exported for callers of distill.loop

log = logging.getLogger(__name__)


def apply_lr_schedule(accelerator: Accelerator, optimizers, optim: DictConfig, train: DictConfig, counters: Counters) -> float:
    """Set every optimizer's learning rate for the next step; the factor is the same on every process."""
    if optim.lr_schedule == "constant":  # nothing to set, and no all-reduce on every step
        return 1.0
    progress = budget_progress(counters.step, train.max_steps, counters.train_seconds, train.max_minutes)
    if accelerator.num_processes > 1:  # wall clocks differ a little between processes; take the furthest
        progress = accelerator.reduce(torch.tensor([progress], device=accelerator.device), reduction="max").item()
    factor = lr_factor(progress, optim.lr_schedule, optim.min_lr_ratio)
    for optimizer in optimizers:
        set_lr_factor(optimizer, factor)
    return factor


def is_due(done: int, every: int, last: int) -> bool:
    """Every `every` steps and at the last one."""
    return done % every == 0 or done == last


def export_and_evaluate(cfg: DictConfig, p: Prepared) -> dict:
    """Export the student (EMA weights; the main process), reload it from disk, and evaluate it beside the teacher's
    sampler(s): every process samples its share of the seeds, the main process computes the figures ({} elsewhere)."""
    accelerator, state, run_dir = p.accelerator, p.state, p.run_dir
    shard = Shard(accelerator.process_index, accelerator.num_processes)
    student, ema = state.student, state.ema
    if p.sharded:  # FSDP: every process gathers the weights into a plain copy of the teacher
        student, ema = whole_student(state.student, state.ema, trainable_copy(p.teacher)), None
    if shard.main:
        sigmas = cfg.student.sigmas or [state.student.sigma_max]
        teacher = None if cfg.teacher.path is None else str(cfg.teacher.path)
        record = student_record(sigmas, cfg.loss.guidance_scale, teacher, record_prompts(cfg), cfg.teacher.get("family"))
        export_student(student, ema, run_dir / "student", record, run_dir)
    accelerator.wait_for_everyone()
    student = teachers.load(run_dir / "student", key="student", family=cfg.teacher.get("family")).to(accelerator.device)
    metrics = p.task.evaluate(cfg, student, p.real, run_dir, accelerator.device, shard)
    if shard.main:
        write_model_card(run_dir / "student", run_dir)  # now with the figures
    return metrics


@contextlib.contextmanager
def crash_report(accelerator: Accelerator, counters: Counters, checkpoints: Path):
    """An exception in the loop (on any process) is logged with the run's last sealed checkpoint, then raised: the
    launcher (torchrun, accelerate) stops the other processes, and a re-run of the same command resumes there."""
    try:
        yield
    except TrainingStopped:  # a stop the loop decided (SIGTERM, the non-finite guard): its message names the checkpoint
        raise
    except Exception as err:
        report = (f"process {accelerator.process_index} stopped at step {counters.step + 1} by {type(err).__name__}: {err}; "
                  f"{last_sealed_note(checkpoints)}; re-run the same command to resume")
        log.error(report)  # into the run's cli.log
        print(f"crashed: {report}", file=sys.stderr, flush=True)
        raise


def plot_inputs(task, draws: Draws, seed: int):
    """Fixed noise (and conditions 0, 1, ... of the table: labels, or prompts) for the progress sheets."""
    n = PLOT_SAMPLES[task.kind]
    z = torch.randn(n, *draws.shape, generator=torch.Generator().manual_seed(seed)).to(draws.device)
    table = None if draws.conditions is None else draws.conditions.table
    cond = None if table is None else table[torch.arange(n, device=table.device) % len(table)].to(z.device)
    return z, cond


def run(cfg: DictConfig) -> dict:
    """Distill, export the student, and evaluate it beside the teacher's full sampler."""
    p = prepare(cfg)
    task, run_dir, accelerator, state, counters, d, guard = p.task, p.run_dir, p.accelerator, p.state, p.counters, p.distiller, p.guard
    plain_generator, opt_g, opt_f, main = p.plain_generator, d.student_optimizer, d.fake_optimizer, accelerator.is_main_process
    accelerator.init_trackers("tensorboard", config=OmegaConf.to_container(cfg.train))
    scalar_log = ScalarLog(accelerator, run_dir)
    z_plot, cond_plot = plot_inputs(task, d.draws, cfg.seed)
    train, checkpoints = cfg.train, run_dir / "checkpoints"
    budget = TimeBudget(train.max_minutes, counters.train_seconds)
    last = counters.step if any_process(accelerator, budget.expired()) else train.max_steps  # resumed with the budget spent
    bar = tqdm(range(counters.step, last), initial=counters.step, total=train.max_steps, desc="distill", disable=not main, mininterval=2)
    with StopRequest() as stop, crash_report(accelerator, counters, checkpoints):
        for _ in bar:
            # Update the fake score N times, then the student, then the EMA.
            factor = apply_lr_schedule(accelerator, (opt_g, opt_f), cfg.optim, train, counters)
            logs = distill_step(d, guard, counters) | {"lr/factor": factor}
            if state.ema is not None:
                state.ema.step(state.student.parameters())
            done, counters.train_seconds = counters.step, budget.seconds()
            out_of_time = any_process(accelerator, budget.expired())  # every process stops at the same step
            # Log scalars, plot samples.
            if out_of_time or is_due(done, train.log_every, train.max_steps):
                totals = {f"skipped_total/{k}": float(v) for k, v in guard.skipped.items()}
                logged = scalars(logs) | totals | {"time/train_minutes": counters.train_seconds / 60}
                scalar_log.log(logged, step=done)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logged.items() if k.startswith("loss")}, refresh=False)
            if (main or p.sharded) and is_due(done, train.plot_every, train.max_steps):  # FSDP: every process samples
                task.plot(plain_generator, z_plot, cond_plot, run_dir / "grids" / f"step-{done:06d}.png", accelerator, done)
            # Save a checkpoint; on SIGTERM (preemption) save one and stop.
            preempted = any_process(accelerator, stop.received)
            if preempted or out_of_time or is_due(done, train.checkpoint_every, train.max_steps):
                saved = save_training_state(accelerator, state, counters, checkpoints, train.keep_last)
            if preempted:
                accelerator.end_training()
                raise TrainingStopped(f"SIGTERM at step {done}: saved {saved}; re-run the same command to resume", EXIT_SIGTERM)
            if out_of_time:  # train.max_minutes: the student as it is now is the result
                log.info("train.max_minutes=%s reached at step %d; saved %s", train.max_minutes, done, saved)
                break

    # Export the student and evaluate it beside the teacher's full sampler.
    metrics = export_and_evaluate(cfg, p)
    accelerator.end_training()
    if main:
        print("\n".join(summary_lines(metrics, run_dir)), flush=True)
    return metrics
