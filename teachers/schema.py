"""The config schema: hydra structured configs for every config group, with each key's type and default in one place.

The YAML files in configs/ only override (`defaults: [base_<group>, _self_]`); hydra refuses an unknown key or a value
of the wrong type while it composes, and teachers.cli turns that into one `error:` line. Choices and ranges, and the
rules across keys, are checked in code beside what they configure (distill/config.py, teachers/checks.py): OmegaConf
2.3 has no `Literal` type, so each choice list is a tuple here that the checks name in their errors.
It lives beside teachers.cli, which every entry point (distill, eval, teachers.train) composes through, and imports
nothing heavy: the entry points register it before they compose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

REAL_SCORES = ("network", "analytic")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
SIGMA_DISTRIBUTIONS = ("ramp", "lognormal")  # loss.*.distribution: uniform t on the teacher's ramp, or EDM's lognormal
SAMPLER_NAMES = ("euler", "heun", "ddim", "dpmpp_2m")  # eval.samplers.SAMPLERS (tests/test_fast_check.py checks they agree)
REFERENCE_SPLITS = ("train", "test")


# --- train.yaml's own sections ---------------------------------------------------------------------------------------

@dataclass
class TrainSection:
    max_steps: int = 2000
    max_minutes: Optional[float] = None  # wall-clock budget of the training loop (summed over resumes)
    batch_size: int = 256  # student samples per step (per process)
    regression_batch_size: int = 256  # teacher ODE pairs per step
    num_fake_steps_per_student_step: int = 5  # DMD2's two time-scale rule
    reuse_student_samples: bool = False  # the first fake update trains on the last student update's samples (DMD2)
    grad_clip: Optional[float] = 1.0  # max global L2 norm per network (train.yaml says why 1)
    ema_decay: Optional[float] = 0.99  # null disables the EMA
    checkpoint_every: int = 500
    keep_last: int = 2
    resume_from: Optional[str] = None  # a checkpoints/step-N folder; null: the newest that verifies
    max_consecutive_skips: int = 20  # non-finite updates in a row (per network) before the run stops
    log_every: int = 25
    plot_every: int = 500
    mixed_precision: str = "no"  # MIXED_PRECISIONS
    gradient_checkpointing: bool = False
    init_from: Optional[str] = None  # an earlier run's checkpoint whose networks start this run (DMD2's GAN stage)


@dataclass
class LoraSection:
    rank: Optional[int] = None  # null: full weights; DMD2's SDXL LoRA student: 64
    alpha: float = 8.0
    targets: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    fake_score: bool = False


@dataclass
class TrainConfig:
    """configs/train.yaml, less its groups (typed by their own schemas)."""

    seed: int = 0
    deterministic: bool = False
    run_dir: str = MISSING
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
    teacher: Any = MISSING
    data: Any = MISSING
    student: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    eval: Any = MISSING


# --- groups -----------------------------------------------------------------------------------------------------------

@dataclass
class StudentConfig:
    num_steps: int = 1
    sigmas: Optional[List[float]] = None  # null: [sigma_max]; k decreasing noise levels for a k-step student


@dataclass
class OptimConfig:
    student_lr: float = 1.0e-4
    fake_lr: float = 1.0e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    fused: bool = True  # torch's fused AdamW where the device has it
    gan_head_lr: float = "${optim.fake_lr}"  # type: ignore[assignment]  (an interpolation until resolved)
    lr_schedule: str = "constant"  # distill.schedule.LR_SCHEDULES
    min_lr_ratio: float = 0.0


@dataclass
class SigmaRange:
    """A noise-level draw: EDM's rho-spaced sigmas between min and max at t in [t_min, t_max] (distribution ramp), or
    EDM's lognormal ln sigma ~ N(p_mean, p_std^2) clamped to [min, max] (distribution lognormal); null min/max: the
    teacher's own."""

    min: Optional[float] = None
    max: Optional[float] = 80.0
    rho: float = 7.0
    t_min: float = 0.02
    t_max: float = 0.98
    distribution: str = "ramp"  # SIGMA_DISTRIBUTIONS
    p_mean: float = -1.2  # EDM's training draw (lognormal only)
    p_std: float = 1.2


@dataclass
class PairsConfig:
    num_pairs: int = 4096
    sampler: str = "heun"  # SAMPLER_NAMES
    num_steps: int = 18
    batch_size: int = 1024


def _follows_sigma(rho: Any = "${..sigma.rho}") -> SigmaRange:
    return SigmaRange(min="${..sigma.min}", max="${..sigma.max}", rho=rho)  # type: ignore[arg-type]


@dataclass
class LossConfig:
    # The loss terms of each side, by name: nodes with a _target_ (a distill.terms class), its weight and settings,
    # checked when they are built (distill.terms.build_terms). Default: DMD + regression (loss=dmd_regression).
    student: Dict[str, Any] = field(default_factory=lambda: {
        "dmd": {"_target_": "distill.terms.DMD", "weight": 1.0},
        "regression": {"_target_": "distill.terms.Regression", "weight": 0.25, "distance": "l2", "pseudo_huber_c": 0.03},
    })
    fake: Dict[str, Any] = field(default_factory=lambda: {
        "denoising": {"_target_": "distill.terms.Denoising", "weight": 1.0, "weighting": "auto"},
    })
    guidance_scale: float = 1.0  # CFG on the real score (1: none)
    fake_guidance_scale: float = 1.0  # CFG on the fake score, in its training and where the student reads it (SiD-LSG)
    sigma: SigmaRange = field(default_factory=SigmaRange)  # the DMD loss's noise levels
    fake_sigma: SigmaRange = field(default_factory=_follows_sigma)  # the fake score's denoising loss's
    sigma_up_to_student_step: bool = False
    gan_last_step_only: bool = False
    last_step_only: bool = False
    step_aware_fake_score: bool = False
    gan_sigma: SigmaRange = field(default_factory=lambda: _follows_sigma(rho=7.0))  # the GAN's
    pairs: PairsConfig = field(default_factory=PairsConfig)


@dataclass
class SamplerSpec:
    name: str = "heun"  # SAMPLER_NAMES
    num_steps: int = 18


@dataclass
class ToyEvalConfig:
    num_samples: int = 10000
    seed: int = 1234
    feature_extractor: str = "identity"
    teacher_samplers: List[SamplerSpec] = field(default_factory=lambda: [SamplerSpec()])
    mode_recall_share: float = 0.5
    mode_radius_quantile: float = 0.999
    mmd_max_samples: int = 4000


@dataclass
class ClassifierFit:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2.0e-3


@dataclass
class FidEvalConfig:
    num_samples: int = 2000
    seed: int = 1234
    batch_size: int = 500
    feature_extractor: str = "domain"  # domain | inception | clip
    reference_split: str = "train"  # REFERENCE_SPLITS
    reference_stats: Optional[str] = None
    teacher_samplers: List[SamplerSpec] = field(default_factory=lambda: [SamplerSpec()])
    center_crop: Optional[int] = None
    clip_model_path: Optional[str] = None
    cross_check: bool = True
    cache_teacher_samples: bool = True
    cache_dir: str = "${oc.env:XDG_CACHE_HOME,${oc.env:HOME}/.cache}/onestep-distill"
    classifier_path: Optional[str] = None
    classifier_fit: ClassifierFit = field(default_factory=ClassifierFit)
    inception_backend: str = "clean-fid"
    inception_path: Optional[str] = None
    inception_sha256: Optional[str] = None
    quality_figures: bool = True
    bootstrap_resamples: int = 200
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prdc_k: int = 5
    prdc_max_samples: int = 5000
    second_classifier: Optional[str] = None
    second_classifier_arch: str = "mlp"


@dataclass
class ToyData:
    name: str = MISSING
    kind: str = "toy"
    means: List[Any] = MISSING  # one point (a list of numbers) per mode, any dimension; checked by teachers.checks
    stds: List[float] = MISSING  # one per mode
    weights: List[float] = MISSING  # summing to 1


@dataclass
class PromptsConfig:
    source: str = "file"  # file | hub | mnist_captions
    path: Optional[str] = None
    eval_path: Optional[str] = None
    name: Optional[str] = None
    split: Optional[str] = None
    eval_split: Optional[str] = None
    caption_key: Optional[str] = None
    max_prompts: Optional[int] = None


@dataclass
class ImageData:
    name: str = MISSING
    kind: str = "image"
    source: str = MISSING  # teachers.data.SOURCES: mnist | digits | folder | hub
    path: Optional[str] = None  # source=folder
    split: str = "train"  # source=hub: the split read before the toolkit's own train/test split
    image_key: str = "image"
    caption_key: Optional[str] = None
    label_key: Optional[str] = "label"  # null: unlabelled
    mode: str = "L"  # L | RGB
    resolution: Optional[int] = None
    test_fraction: float = 0.1
    split_seed: int = 0
    pad: int = 0  # pixels of padding around each image (the miniature SD's VAE takes 32x32 MNIST)
    prompts: Optional[PromptsConfig] = None


@dataclass
class MlpNet:
    hidden_dim: int = 128
    num_layers: int = 4
    emb_dim: int = 64


@dataclass
class MlpFit:
    """EDM training of the toy MLP (teachers.fit): ln(sigma) ~ N(p_mean, p_std^2), EDM Table 1."""

    max_steps: int = 3000
    batch_size: int = 512
    lr: float = 2.0e-3
    p_mean: float = -1.2
    p_std: float = 1.6
    ema_decay: float = 0.999


@dataclass
class MlpTeacher:
    kind: str = "mlp"
    real: str = "network"  # REAL_SCORES
    path: Optional[str] = None  # null: trained inside the run
    family: Optional[str] = None  # written by validation: the detected family
    net: MlpNet = field(default_factory=MlpNet)
    fit: MlpFit = field(default_factory=MlpFit)


@dataclass
class UnetNet:
    block_out_channels: List[int] = field(default_factory=lambda: [16, 32, 32])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    class_conditional: bool = False


@dataclass
class DdpmSchedule:
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"


@dataclass
class UnetFit(MlpFit):
    """EDM training of a pixel UNet (teachers.fit); class-conditional ones drop labels for CFG."""

    max_steps: int = 5000
    batch_size: int = 64
    p_std: float = 1.2
    label_dropout: float = 0.1  # the share of labels replaced by the null class


@dataclass
class UnetTeacher:
    kind: str = "unet"
    real: str = "network"
    path: Optional[str] = None  # null: trained inside the run
    family: Optional[str] = None
    net: UnetNet = field(default_factory=UnetNet)
    scheduler: DdpmSchedule = field(default_factory=DdpmSchedule)
    fit: UnetFit = field(default_factory=UnetFit)


@dataclass
class PipelineTeacher:
    """A teacher given as a folder or hub id (SD family, DiT, EDM): never trained in the run."""

    kind: str = MISSING
    real: str = "network"
    path: Optional[str] = None
    family: Optional[str] = None
    dtype: Optional[str] = "float32"  # teachers.checks.DTYPE_NAMES: the frozen parts' precision
    preview_vae: Optional[str] = None  # an AutoencoderTiny folder for the preview server (latent teachers)
    net: Optional[Dict[str, Any]] = None  # teacher=sd_mini: the miniature SD that `python -m teachers.train` trains
    fit: Optional[Dict[str, Any]] = None


SCHEMAS = {  # (group, name) -> schema; each YAML file of the group starts `defaults: [<name>, _self_]`
    (None, "base_train"): TrainConfig,
    ("student", "base_student"): StudentConfig,
    ("optim", "base_optim"): OptimConfig,
    ("loss", "base_loss"): LossConfig,
    ("eval", "base_toy_eval"): ToyEvalConfig,
    ("eval", "base_fid_eval"): FidEvalConfig,
    ("data", "base_toy_data"): ToyData,
    ("data", "base_image_data"): ImageData,
    ("teacher", "base_mlp"): MlpTeacher,
    ("teacher", "base_unet"): UnetTeacher,
    ("teacher", "base_pipeline"): PipelineTeacher,
}


def register() -> None:
    """Put every schema in hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)
