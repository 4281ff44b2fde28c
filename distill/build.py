"""Build a distillation run before its first step: the accelerator, the teacher and D_real, the loss terms and what
they need (regression pairs, a GAN head and real images), the student and fake score with their optimizers, resume."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf

from distill.checkpoint import CorruptCheckpoint, latest_loadable, load_checkpoint
from distill.config import loss_terms, validate
from distill.fake_score import build_step_embedding
from distill.gan import Critic, build_head
from distill.generator import StudentGenerator, trainable_copy
from distill.guard import NonFiniteGuard
from distill.lora import add_lora
from distill.pairs import generate_pairs, load_pairs
from distill.sharding import FsdpSettings, fsdp_settings, shard_network
from distill.state import Counters, TrainState
from distill.steps import Distiller, Draws, Networks, Settings, StepSampling, Stored
from distill.terms import Needs, combined_needs
from teachers.conditions import Conditions
from teachers.errors import ConfigError
from teachers.guidance import GuidedDenoiser, check_guidable


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
    """Teacher ODE pairs for the regression term, made once per run dir (resumable, split across processes); their
    conds are rows of the condition table (class labels, or a prompt set's embeddings)."""
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


def trainable(network: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of a full network, the adapters of a LoRA one."""
    return [p for p in network.parameters() if p.requires_grad]


def build_state(teacher, optim: DictConfig, ema_decay: float | None, gan: bool = False, seed: int = 0, fake_steps: int = 1,
                lora: DictConfig | None = None, gradient_checkpointing: bool = False, fsdp: FsdpSettings | None = None) -> TrainState:
    """Student and fake score as trainable copies of the teacher (with LoRA layers when lora.rank is set: the student's,
    and the fake score's with lora.fake_score), the GAN head on the fake score's bottleneck
    (DMD2), the fake score's step embedding when fake_steps > 1 (loss.step_aware_fake_score), their optimizers (head
    and step embedding train with the fake score, as the head does in DMD2), the student EMA. With fsdp, the networks
    are sharded over the processes (FSDP2) before their optimizers are made."""
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
    if fsdp is not None:  # sharded before the optimizers and the EMA are made: they hold the sharded parameters
        for network in (student, fake, head, steps):
            if network is not None:
                shard_network(network, fsdp)
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


def step_sampling(cfg: DictConfig, student: StudentGenerator) -> StepSampling:
    """The k-step student's sampling options (loss.last_step_only, gan_last_step_only, sigma_up_to_student_step)."""
    loss = cfg.loss
    return StepSampling(tuple(student.sigmas), loss.last_step_only, loss.gan_last_step_only, loss.sigma_up_to_student_step)


def settings(cfg: DictConfig, teacher) -> Settings:
    train = cfg.train
    return Settings(train.batch_size, train.regression_batch_size, train.num_fake_steps_per_student_step,
                    train.reuse_student_samples, train.grad_clip, teacher.sigma_data, teacher.loss_weighting)


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
    distiller: Distiller
    guard: NonFiniteGuard
    conditions: Conditions | None
    teacher: torch.nn.Module  # the frozen teacher (never wrapped): the structure a sharded student is exported in
    sharded: bool  # FSDP2: every process runs the student for plots, and gathers it for the export


def prepare(cfg: DictConfig) -> Prepared:
    """Validate, build the teacher, D_real, the terms and what they need, the student and fake score, resume."""
    task = validate(cfg)
    student_terms, fake_terms = loss_terms(cfg.loss)
    needs: Needs = combined_needs({**student_terms, **fake_terms})
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fsdp = fsdp_settings()  # before the accelerator: it runs as for DDP, and the networks are sharded here
    accelerator = make_accelerator(run_dir, cfg.deterministic, cfg.train.mixed_precision)
    device, main = accelerator.device, accelerator.is_main_process
    if main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    # Build the teacher, D_real, what the terms need, and the student and fake score as copies.
    teacher, real = task.setup_teacher(cfg, run_dir, accelerator)
    conditions = task.conditions(cfg, teacher, "train")
    if cfg.loss.guidance_scale != 1:  # CFG on the real score (DMD sec. 4); the fake score stays unguided unless
        real = GuidedDenoiser(teacher, cfg.loss.guidance_scale)  # loss.fake_guidance_scale says (SiD-LSG)
    if cfg.loss.fake_guidance_scale != 1:
        check_guidable(teacher, cfg.loss.fake_guidance_scale, "loss.fake_guidance_scale")
    fake_steps = cfg.student.num_steps if cfg.loss.step_aware_fake_score else 1
    state = build_state(teacher, cfg.optim, cfg.train.ema_decay, gan=needs.critic, seed=cfg.seed, fake_steps=fake_steps,
                        lora=cfg.get("lora"), gradient_checkpointing=cfg.train.gradient_checkpointing, fsdp=fsdp)  # fails early
    # ODE pairs of the real score the student matches (guided, or exact), and real images for the GAN.
    pairs = setup_pairs(cfg, real, run_dir, accelerator, conditions) if needs.pairs else None
    real_data, real_conditions = task.real_data(cfg, teacher, device, conditions) if needs.critic else (None, None)

    # Prepare the networks for accelerate (DDP wraps them; FSDP shards them in place), then resume into them.
    plain_generator = StudentGenerator(state.student, cfg.student.sigmas)  # for main-process-only plots: no DDP collectives
    critic = Critic(state.fake_score, state.gan_head, state.step_embedding, cfg.loss.fake_guidance_scale)
    if fsdp is None:
        generator, fake_ddp, opt_g, opt_f = accelerator.prepare(plain_generator, critic, state.student_optimizer, state.fake_optimizer)
    else:  # sharded already (FSDP2 units: each gathers its weights in its own forward); no DDP around them
        (generator, fake_ddp), (opt_g, opt_f) = (plain_generator, critic), accelerator.prepare(state.student_optimizer, state.fake_optimizer)
    if state.ema is not None:
        state.ema.to(device)
    set_seed(cfg.seed, device_specific=True)  # the training stream starts here, however the set-up went
    counters = resume(state, run_dir / "checkpoints", cfg.train.resume_from, accelerator.process_index, accelerator.scaler)
    if counters.step == 0 and cfg.train.get("init_from"):  # a new stage (DMD2's GAN stage) from an earlier run's networks
        state.init_from(*load_checkpoint(Path(cfg.train.init_from), check_hashes=False))
    guard = NonFiniteGuard(cfg.train.max_consecutive_skips, run_dir / "checkpoints", counters.skipped)
    ranges = {key: dict(cfg.loss[key]) for key in ("sigma", "fake_sigma", "gan_sigma")}
    draws = Draws(device, tuple(teacher.shape), plain_generator, step_sampling(cfg, plain_generator), ranges, conditions,
                  teacher.noise_ramp)
    distiller = Distiller(
        Networks(accelerator, generator, fake_ddp, real, critic), opt_g, opt_f, student_terms, fake_terms, draws,
        Stored(pairs, conditions, real_data, real_conditions), settings(cfg, teacher),
    )
    return Prepared(task, run_dir, accelerator, state, counters, real, plain_generator, distiller, guard, conditions, teacher,
                    fsdp is not None)
