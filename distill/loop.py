"""The distillation run: accelerate orchestration only; the math lives in steps and losses."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from distill.checkpoint import CorruptCheckpoint, latest_loadable, load_checkpoint
from distill.config import uses_gan, validate
from distill.export import export_student, record_prompts, student_record, write_model_card
from distill.fake_score import build_step_embedding
from distill.gan import Critic, build_head
from distill.generator import StudentGenerator, trainable_copy
from distill.lora import add_lora
from distill.noise import sample_dmd_sigma
from distill.pairs import generate_pairs, load_pairs
from distill.schedule import budget_progress, lr_factor, set_lr_factor
from distill.tasks import PLOT_SAMPLES
from distill.guard import EXIT_SIGTERM, NonFiniteGuard, StopRequest, TimeBudget, any_process
from distill.logger import ScalarLog
from distill.state import Counters, TrainState, save_training_state
from distill.summary import summary_lines
from distill.steps import Batch, FakeLoss, Networks, StudentLoss, fake_step, scalars, student_step
from teachers.conditions import Conditions
from teachers.errors import ConfigError, TrainingStopped
from teachers.guidance import GuidedDenoiser
import teachers

log = logging.getLogger(__name__)


def make_accelerator(run_dir: Path, deterministic: bool, mixed_precision: str = "no") -> Accelerator:
    """Accelerate with tensorboard logging into <run_dir>/tensorboard; mixed_precision (train.mixed_precision: no,
    bf16, fp16) autocasts the student's and fake score's forwards."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir))
    # cpu=True where there is no GPU: accelerate only forms a multi-process CPU group when told so.
    return Accelerator(cpu=not torch.cuda.is_available(), log_with="tensorboard", project_config=project, mixed_precision=mixed_precision)


def setup_pairs(cfg: DictConfig, teacher, run_dir: Path, accelerator: Accelerator, conditions: Conditions | None):
    """Teacher ODE pairs for the regression loss, made once per run dir (resumable, split across processes); their
    conds are rows of the condition table (class labels, or a prompt set's embeddings)."""
    if cfg.loss.regression_weight == 0:
        return None
    path = run_dir / "pairs"
    generate_pairs(
        teacher, path, **cfg.loss.pairs, seed=cfg.seed, conditions=conditions,
        rank=accelerator.process_index, world_size=accelerator.num_processes, device=accelerator.device,
        progress=accelerator.is_main_process,
    )
    accelerator.wait_for_everyone()
    pairs = load_pairs(path, cfg.loss.pairs.num_pairs)  # conds as row indices: a batch's rows are looked up per step
    return tuple(t.to(accelerator.device) for t in pairs)


def make_optimizer(params, lr: float, optim: DictConfig) -> torch.optim.Optimizer:
    """AdamW with the configured betas and weight decay; optim.fused: torch's fused kernel (one pass over all
    parameters) instead of its default (a per-parameter loop on the CPU, foreach on CUDA)."""
    fused = True if optim.fused else None
    return torch.optim.AdamW(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, fused=fused)


def build_state(teacher, optim: DictConfig, ema_decay: float | None, gan: bool = False, seed: int = 0, fake_steps: int = 1,
                lora: DictConfig | None = None, gradient_checkpointing: bool = False) -> TrainState:
    """Student and fake score as trainable copies of the teacher (with LoRA layers when lora.rank is set: the student's,
    and the fake score's with lora.fake_score), the GAN head on the fake score's bottleneck
    (DMD2), the fake score's step embedding when fake_steps > 1 (loss.step_aware_fake_score), their optimizers (head
    and step embedding train with the fake score, as the head does in DMD2), the student EMA."""
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    if lora is not None and lora.rank is not None:
        add_lora(student, lora)
        if lora.fake_score:
            add_lora(fake, lora)
    if gradient_checkpointing:
        for network in (student, fake):
            network.enable_gradient_checkpointing()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the head's initial weights do not depend on what ran before
        head = build_head(fake).train() if gan else None
    steps = build_step_embedding(fake, fake_steps).train() if fake_steps > 1 else None
    fake_groups = [{"params": trainable(fake)}]
    if head is not None:
        fake_groups.append({"params": list(head.parameters()), "lr": optim.gan_head_lr})
    if steps is not None:  # the last group: a warm start from a run without it appends it (state.with_new_groups)
        fake_groups.append({"params": list(steps.parameters())})
    return TrainState(
        student=student,
        fake_score=fake,
        student_optimizer=make_optimizer(trainable(student), optim.student_lr, optim),
        fake_optimizer=make_optimizer(fake_groups, optim.fake_lr, optim),
        ema=EMAModel(student.parameters(), decay=ema_decay) if ema_decay is not None else None,  # frozen ones stay as they are
        gan_head=head,
        step_embedding=steps,
    )


def trainable(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of a full network, the adapters of a LoRA one."""
    return [p for p in network.parameters() if p.requires_grad]


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


def fake_score_weighting(loss: DictConfig, teacher) -> str:
    """loss.fake_score_weighting, with `auto` = the teacher network's own MSE (eps-MSE for an eps UNet, as DMD2)."""
    return teacher.loss_weighting if loss.fake_score_weighting == "auto" else loss.fake_score_weighting


def random_batch(tensors, batch_size: int, device):
    """A random batch of stored tensors (teacher ODE pairs (z_ref, y_ref[, label]), or real images[, labels])."""
    if tensors is None:
        return None
    idx = torch.randint(len(tensors[0]), (batch_size,), device=device)
    return tuple(t[idx] for t in tensors)


def with_conds(batch: tuple | None, conditions: Conditions | None) -> tuple | None:
    """A stored batch whose last entry is condition rows (pairs (z, y, rows), real images (x, rows)) with those rows
    looked up in the condition table: only a batch's conds reach the device."""
    if batch is None or conditions is None:
        return batch
    return (*batch[:-1], conditions.rows(batch[-1]))


def is_due(done: int, every: int, last: int) -> bool:
    """Every `every` steps and at the last one."""
    return done % every == 0 or done == last


def export_and_evaluate(cfg: DictConfig, task, state: TrainState, real, run_dir: Path, device) -> dict:
    """Export the student (EMA weights), reload it from disk, and evaluate it beside the teacher's sampler(s)."""
    sigmas = cfg.student.sigmas or [state.student.sigma_max]
    teacher = None if cfg.teacher.path is None else str(cfg.teacher.path)
    record = student_record(sigmas, cfg.loss.guidance_scale, teacher, record_prompts(cfg), cfg.teacher.get("family"))
    export_student(state.student, state.ema, run_dir / "student", record, run_dir)
    student = teachers.load(run_dir / "student", key="student", family=cfg.teacher.get("family")).to(device)
    metrics = task.evaluate(cfg, student, real, run_dir, device)
    write_model_card(run_dir / "student", run_dir)  # now with the figures
    return metrics


@dataclass
class StepContext:
    """What every distillation step uses: the prepared networks and optimizers, and the loss settings."""

    accelerator: Accelerator
    generator: torch.nn.Module
    student: StudentGenerator  # the same generator unwrapped: its sigma list and step draws
    fake_score: torch.nn.Module  # the (DDP-prepared) Critic: D_fake and, with the GAN, its head
    critic: torch.nn.Module  # the same Critic unwrapped, for the student's GAN loss (no DDP hooks)
    real: object
    real_data: tuple[torch.Tensor, ...] | None  # images[, condition rows] for the GAN's real side
    real_conditions: Conditions | None  # the table those rows index (the run's, or the real images' own captions)
    student_optimizer: torch.optim.Optimizer
    fake_optimizer: torch.optim.Optimizer
    pairs: tuple[torch.Tensor, ...] | None
    sigma_data: float
    shape: tuple[int, ...]
    conditions: Conditions | None  # the rows conds are drawn from (class labels, text embeddings); None: unconditional
    loss: DictConfig
    train: DictConfig
    fake_weighting: str = "edm"  # the fake score's denoising loss weighting (loss.fake_score_weighting, resolved)
    recent: tuple | None = None  # the last student update's samples, labels and steps (None: one step)


    @property
    def networks(self) -> Networks:
        return Networks(self.accelerator, self.generator, self.fake_score, self.real, self.critic)

    @property
    def fake_loss(self) -> FakeLoss:
        loss = self.loss
        return FakeLoss(self.sigma_data, loss.fake_weight, loss.gan_discriminator_weight, self.fake_weighting, self.train.grad_clip)

    @property
    def student_loss(self) -> StudentLoss:
        loss = self.loss
        return StudentLoss(loss.dmd_weight, loss.regression_weight, loss.regression_distance, loss.pseudo_huber_c,
                           loss.gan_generator_weight, self.train.grad_clip)

    def draw_z(self, n: int) -> torch.Tensor:
        return torch.randn(n, *self.shape, device=self.accelerator.device)

    def draw_cond(self, n: int) -> torch.Tensor | None:
        """Uniform rows of the condition table (class labels, or prompt embeddings); None for unconditional teachers."""
        return None if self.conditions is None else self.conditions.draw(n, device=self.accelerator.device)[0]

    def draw_steps(self, n: int) -> torch.Tensor | None:
        """Each sample's training step: uniform (DMD2), or with loss.last_step_only always the last one."""
        if self.loss.last_step_only and self.student.num_steps > 1:
            return torch.full((n,), self.student.num_steps - 1, device=self.accelerator.device)
        return self.student.draw_steps(n, self.accelerator.device)

    def gan_mask(self, step: torch.Tensor | None) -> torch.Tensor | None:
        """With loss.gan_last_step_only, the samples made at the student's last step; None: all samples."""
        return None if step is None or not self.loss.gan_last_step_only else step == self.student.num_steps - 1

    def sample_sigma(self, n: int, step: torch.Tensor | None = None, key: str = "sigma") -> torch.Tensor:
        """Noise levels of loss.<key>: `sigma` for the DMD gradient, `fake_sigma` for the fake-score loss; with
        loss.sigma_up_to_student_step, each sample's at most its step's input sigma."""
        sigma, device = dict(self.loss[key]), self.accelerator.device
        if step is not None and self.loss.sigma_up_to_student_step:
            sigma["max"] = torch.tensor(self.student.sigmas, device=device)[step].clamp(max=sigma["max"])
        return sample_dmd_sigma(n, **sigma, device=device)

    def sample_gan_sigma(self, n: int) -> torch.Tensor:
        return sample_dmd_sigma(n, **self.loss.gan_sigma, device=self.accelerator.device)


def distill_step(ctx: StepContext, guard: NonFiniteGuard, counters: Counters) -> dict[str, torch.Tensor | float]:
    """N fake-score updates (DMD2's two time-scale rule), then one student update; counts and guards them.

    With train.reuse_student_samples the first fake update trains on the last student update's samples, as DMD2's
    guidance turn does: one generator forward fewer per student update."""
    logs, train, loss, step, n = {}, ctx.train, ctx.loss, counters.step + 1, ctx.train.batch_size
    if loss.dmd_weight > 0 or uses_gan(loss):
        for i in range(train.num_fake_steps_per_student_step):
            reuse = i == 0 and ctx.recent is not None and len(ctx.recent[0]) == n
            z = ctx.draw_z(n)
            x, cond, steps = ctx.recent if reuse else (None, None, ctx.draw_steps(n))
            sigma = ctx.sample_sigma(n, steps, "fake_sigma")
            cond = cond if reuse else ctx.draw_cond(n)  # after sigma: a one-step run's random stream as before
            real_batch = random_batch(ctx.real_data, n, ctx.accelerator.device)  # before the GAN sigma: the random stream as before
            real_batch = with_conds(real_batch, ctx.real_conditions)
            batch = Batch(z, cond, steps, ctx.gan_mask(steps), ctx.sample_gan_sigma(2 * n))
            logs |= fake_step(ctx.networks, ctx.fake_optimizer, batch, sigma, ctx.fake_loss, real_batch, x)
            guard.record("fake_score", logs["skipped/fake_score"] > 0, step)
            counters.fake_updates += 1
    batch_pairs = random_batch(ctx.pairs, train.regression_batch_size, ctx.accelerator.device)
    batch_pairs = with_conds(batch_pairs, ctx.conditions)
    z, cond, steps = ctx.draw_z(n), ctx.draw_cond(n), ctx.draw_steps(n)
    batch = Batch(z, cond, steps, ctx.gan_mask(steps), ctx.sample_gan_sigma(n))
    student_logs, x = student_step(ctx.networks, ctx.student_optimizer, batch, ctx.sample_sigma, batch_pairs, ctx.student_loss)
    logs |= student_logs
    ctx.recent = (x, cond, steps) if train.reuse_student_samples else None
    guard.record("student", logs["skipped/student"] > 0, step)
    counters.step, counters.student_updates, counters.skipped = step, counters.student_updates + 1, guard.skipped
    return logs


def resume(state: TrainState, checkpoints: Path, resume_from: str | None, rank: int, scaler=None) -> Counters:
    """Load the run's newest checkpoint that verifies, else train.resume_from (a warm start: once the run has a sealed
    checkpoint of its own, a re-run of the same command resumes that, not the older one); fresh counters when neither."""
    own = latest_loadable(checkpoints)
    path = own if own is not None else Path(resume_from) if resume_from else None
    if path is None:
        return Counters()
    try:  # verified already, by validate() (resume_from) or by latest_loadable()
        return state.restore(*load_checkpoint(path, check_hashes=False), rank=rank, scaler=scaler)
    except CorruptCheckpoint as err:
        raise ConfigError(f"train.resume_from={path} cannot be resumed: {err}") from None


def plot_inputs(task, ctx: StepContext, seed: int):
    """Fixed noise (and conditions 0, 1, ... of the table: labels, or prompts) for the progress sheets."""
    n = PLOT_SAMPLES[task.kind]
    z = torch.randn(n, *ctx.shape, generator=torch.Generator().manual_seed(seed)).to(ctx.accelerator.device)
    table = None if ctx.conditions is None else ctx.conditions.table
    cond = None if table is None else table[torch.arange(n, device=table.device) % len(table)].to(z.device)
    return z, cond


@dataclass
class Prepared:
    """Everything a run builds before its first step (the benchmark times steps on the same objects)."""

    task: object
    run_dir: Path
    accelerator: Accelerator
    state: TrainState
    counters: Counters
    real: object
    plain_generator: StudentGenerator
    ctx: StepContext
    guard: NonFiniteGuard


def prepare(cfg: DictConfig) -> Prepared:
    """Validate, build the teacher, D_real, the pairs, the student and fake score, resume, and the step context."""
    task = validate(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(run_dir, cfg.deterministic, cfg.train.mixed_precision)
    device, main = accelerator.device, accelerator.is_main_process
    if main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # Build the teacher, D_real, the regression pairs, and the student and fake score as copies.
    teacher, real = task.setup_teacher(cfg, run_dir, accelerator)
    conditions = task.conditions(cfg, teacher, "train")
    guided = cfg.loss.guidance_scale != 1
    if guided:  # CFG on the real score only (DMD sec. 4); the fake score stays unguided
        real = GuidedDenoiser(teacher, cfg.loss.guidance_scale)
    fake_steps = cfg.student.num_steps if cfg.loss.step_aware_fake_score else 1
    state = build_state(teacher, cfg.optim, cfg.train.ema_decay, gan=uses_gan(cfg.loss), seed=cfg.seed, fake_steps=fake_steps,
                        lora=cfg.get("lora"), gradient_checkpointing=cfg.train.gradient_checkpointing)  # fails early
    pairs = setup_pairs(cfg, real, run_dir, accelerator, conditions)  # ODE pairs of the real score the student matches (guided, or exact)
    real_data, real_conditions = task.real_data(cfg, teacher, device, conditions) if uses_gan(cfg.loss) else (None, None)
    set_seed(cfg.seed, device_specific=True)  # the training stream starts here, however the set-up went
    counters = resume(state, run_dir / "checkpoints", cfg.train.resume_from, accelerator.process_index, accelerator.scaler)
    if counters.step == 0 and cfg.train.get("init_from"):  # a new stage (DMD2's GAN stage) from an earlier run's networks
        state.init_from(*load_checkpoint(Path(cfg.train.init_from), check_hashes=False))
    plain_generator = StudentGenerator(state.student, cfg.student.sigmas)  # for main-process-only plots: no DDP collectives
    critic = Critic(state.fake_score, state.gan_head, state.step_embedding)
    generator, fake_ddp, opt_g, opt_f = accelerator.prepare(plain_generator, critic, state.student_optimizer, state.fake_optimizer)
    if state.ema is not None:
        state.ema.to(device)
    guard = NonFiniteGuard(cfg.train.max_consecutive_skips, run_dir / "checkpoints", counters.skipped)
    ctx = StepContext(
        accelerator=accelerator, generator=generator, student=plain_generator, fake_score=fake_ddp, critic=critic, real=real, real_data=real_data, real_conditions=real_conditions,
        student_optimizer=opt_g,
        fake_optimizer=opt_f, pairs=pairs, sigma_data=teacher.sigma_data, shape=tuple(teacher.shape),
        conditions=conditions, loss=cfg.loss, train=cfg.train,
        fake_weighting=fake_score_weighting(cfg.loss, teacher),
    )
    return Prepared(task, run_dir, accelerator, state, counters, real, plain_generator, ctx, guard)


def run(cfg: DictConfig) -> dict:
    """Distill, export the student, and evaluate it beside the teacher's full sampler."""
    p = prepare(cfg)
    task, run_dir, accelerator, state, counters, ctx, guard = p.task, p.run_dir, p.accelerator, p.state, p.counters, p.ctx, p.guard
    plain_generator, opt_g, opt_f, main = p.plain_generator, ctx.student_optimizer, ctx.fake_optimizer, accelerator.is_main_process
    accelerator.init_trackers("tensorboard", config=OmegaConf.to_container(cfg.train))
    scalar_log = ScalarLog(accelerator, run_dir)
    z_plot, cond_plot = plot_inputs(task, ctx, cfg.seed)
    train, checkpoints = cfg.train, run_dir / "checkpoints"
    budget = TimeBudget(train.max_minutes, counters.train_seconds)
    last = counters.step if any_process(accelerator, budget.expired()) else train.max_steps  # resumed with the budget spent
    bar = tqdm(range(counters.step, last), initial=counters.step, total=train.max_steps, desc="distill", disable=not main, mininterval=2)
    with StopRequest() as stop:
        for _ in bar:
            # Update the fake score N times, then the student, then the EMA.
            factor = apply_lr_schedule(accelerator, (opt_g, opt_f), cfg.optim, train, counters)
            logs = distill_step(ctx, guard, counters) | {"lr/factor": factor}
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
            if main and is_due(done, train.plot_every, train.max_steps):
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
    metrics = export_and_evaluate(cfg, task, state, p.real, run_dir, accelerator.device) if main else {}
    accelerator.end_training()
    if main:
        print("\n".join(summary_lines(metrics, run_dir)), flush=True)
    return metrics
