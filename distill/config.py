"""Check a distillation config before any work starts; every problem is one ConfigError line."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from distill.schedule import LR_SCHEDULES
from teachers import families
from teachers.checks import check_mlp_teacher, check_sd_teacher, ddpm_sigma_range, is_number, mixture_lists
from teachers.errors import ConfigError
from teachers.families import Family
from distill.terms import Needs, Term, build_terms, combined_needs
from teachers.schema import MIXED_PRECISIONS, REAL_SCORES, REFERENCE_SPLITS, SAMPLER_NAMES, SIGMA_DISTRIBUTIONS



POSITIVE_INT_TRAIN_KEYS = (
    "batch_size", "regression_batch_size", "num_fake_steps_per_student_step", "log_every", "plot_every", "checkpoint_every",
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_positive(section: DictConfig, prefix: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = section[key]
        _require(is_number(value) and value > 0, f"{prefix}.{key}={value}; it must be a number > 0")


def loss_terms(loss) -> tuple[dict[str, Term], dict[str, Term]]:
    """The student's and the fake score's terms (loss.student, loss.fake), weight 0 left out."""
    return build_terms(loss.student, "student"), build_terms(loss.fake, "fake")


def check_teacher(teacher: DictConfig, dim: int) -> Family:
    """teacher.real is known; a given teacher.path is an MLP teacher folder of the data's dimension."""
    _require(teacher.real in REAL_SCORES, f"teacher.real={teacher.real}; allowed: {', '.join(REAL_SCORES)}")
    if teacher.path is None:
        check_mlp_teacher(teacher)  # it will be trained in the run
        return families.FAMILIES["mlp"]
    family = families.expect_family(teacher.path, "mlp")
    folder_dim = families.read_json(families.local_folder(teacher.path) / families.CONFIG_FILE, "model config").get("dim")
    _require(folder_dim == dim, f"teacher.path={teacher.path} is a {folder_dim}-D teacher but the data is {dim}-D")
    return family


IMAGE_TEACHERS = ("unet", "sd", "dit", "edm")
GIVEN_TEACHERS = {  # image teacher groups that are never trained in the run: what teacher.path must be
    "dit": "a DiTPipeline folder or a hub id such as facebook/DiT-XL-2-256",
    "edm": "a folder made by `distill-convert PICKLE OUT_DIR` from an NVlabs EDM pickle (experiments/edm/README.md)",
}


def check_image_teacher(teacher: DictConfig, data: DictConfig) -> Family:
    """A UNet teacher (class labels or none), a Stable Diffusion-family teacher (prompts), a DiT or an EDM network
    (class labels or none) for image data: a zoo name, a folder or a hub id, whose family (read from its
    model_index.json or config.json, no weights) fits the teacher group."""
    kind = teacher.get("kind", "mlp")
    _require(kind in IMAGE_TEACHERS, f"teacher={kind} cannot model images; use teacher=unet, teacher=sd, teacher=dit or teacher=edm")
    if kind == "sd":
        check_sd_teacher(teacher, data)  # the SD family's own settings
    else:
        if data.get("prompts") is not None:
            raise ConfigError(f"data.prompts is set (data={data.name}) but teacher={kind} takes class labels, not prompts; "
                              "use teacher=sd for a text-to-image teacher, or image data without prompts (data=mnist)")
        if kind in GIVEN_TEACHERS and teacher.path is None:
            raise ConfigError(f"teacher={kind} needs teacher.path ({GIVEN_TEACHERS[kind]})")
    return families.FAMILIES["unet"] if teacher.path is None else families.expect_family(teacher.path, kind)


def teacher_sigma_range(cfg: DictConfig, vp_tables: bool = True) -> tuple[float, float] | None:
    """The teacher's [sigma_min, sigma_max] from its configs (no weights): its folder's, or the one the run trains.
    vp_tables=False: a DDPM table's range without torch, to float64 precision (teachers.checks.ddpm_sigma_range)."""
    if cfg.teacher.path is not None:
        return families.sigma_range(cfg.teacher.path, families.FAMILIES[cfg.teacher.family], vp_tables=vp_tables)
    if cfg.teacher.get("scheduler") is not None:  # a UNet trained in the run: its DDPM table
        return (families.vp_table_range if vp_tables else ddpm_sigma_range)(dict(cfg.teacher.scheduler), {})
    return 0.002, 80.0  # an MLP trained in the run: MLPDenoiser's defaults


SIGMA_TOLERANCE = 1e-3  # relative: presets write table values to a few digits


def check_sigma_ranges(cfg: DictConfig, sigma_range: tuple[float, float] | None, fill: bool = True) -> None:
    """Every configured noise level lies in the teacher's [sigma_min, sigma_max] (refused, not clamped: the adapters
    would run the network at the clamped sigma while the noising used the configured one); with fill, a null loss
    bound is the teacher's own, written into the config (from the exact table, not a float64 estimate of it)."""
    if sigma_range is None:
        return
    low, high = sigma_range
    inside = lambda v: low * (1 - SIGMA_TOLERANCE) <= v <= high * (1 + SIGMA_TOLERANCE)  # noqa: E731
    allowed = f"the teacher's sigma range [{low:.6g}, {high:.6g}]"
    for name in ("sigma", "fake_sigma", "gan_sigma"):
        section = cfg.loss[name]
        for bound, default in (("min", low), ("max", high)):
            if section[bound] is None:
                if not fill:
                    continue
                with open_dict(section):
                    section[bound] = float(default)
            value = section[bound]
            _require(is_number(value) and inside(value), f"loss.{name}.{bound}={value} is outside {allowed}; set it inside, or null for the teacher's own")
    for value in cfg.student.sigmas or []:
        _require(inside(value), f"student.sigmas={list(cfg.student.sigmas)}: {value} is outside {allowed}")


def check_terms(loss: DictConfig) -> Needs:
    """Each term's settings (checked as it is built), and that together they train something and meet their needs:
    a student term reading the fake score needs a fake-score term to train it, and the GAN needs its two sides.
    Returns what the terms need together."""
    student, fake = loss_terms(loss)
    names = lambda terms: ", ".join(terms) or "none"  # noqa: E731
    _require(bool(student), f"loss.student has no term with weight > 0 (configured: {', '.join(loss.student) or 'none'}); "
                            "the student would not train: give one a weight > 0, or use loss=dmd2, loss=sid, ...")
    needs, fake_needs = combined_needs(student), combined_needs(fake)
    if needs.fake:
        _require(bool(fake), f"loss.student terms {names(student)} read the fake score, but loss.fake has no term with "
                             "weight > 0 to train it (add loss.fake.denoising, as loss=dmd_regression has)")
    _require(needs.critic == fake_needs.critic,
             f"loss.student terms: {names(student)}; loss.fake terms: {names(fake)}; the GAN needs a generator term "
             "(loss.student.gan_generator) and a classifier term (loss.fake.gan_discriminator) both with weight > 0, or neither")
    return combined_needs({**student, **fake})


def check_loss(loss: DictConfig) -> Needs:
    """The loss terms, guidance, and the noise ranges and pairs the terms draw from; returns the terms' needs."""
    needs = check_terms(loss)
    for key in ("guidance_scale", "fake_guidance_scale"):
        _require(is_number(loss[key]) and loss[key] >= 0, f"loss.{key}={loss[key]}; it must be a number >= 0 (1 = no guidance)")
    _require(loss.fake_guidance_scale == 1 or not loss.step_aware_fake_score,
             f"loss.fake_guidance_scale={loss.fake_guidance_scale} with loss.step_aware_fake_score=true: the step "
             "embedding reads one step per sample, the guided fake score runs two branches; use one of them")
    for name in ("sigma", "fake_sigma", "gan_sigma"):
        s = loss[name]
        _require(s.min is None or s.max is None or 0 < s.min < s.max, f"loss.{name}.min={s.min}, loss.{name}.max={s.max}; need 0 < min < max")
        _require(0 <= s.t_min < s.t_max <= 1, f"loss.{name}.t_min={s.t_min}, loss.{name}.t_max={s.t_max}; need 0 <= t_min < t_max <= 1")
        _require(s.distribution in SIGMA_DISTRIBUTIONS,
                 f"loss.{name}.distribution={s.distribution}; allowed: {', '.join(SIGMA_DISTRIBUTIONS)}")
        _require(is_number(s.p_mean) and is_number(s.p_std) and s.p_std > 0,
                 f"loss.{name}.p_mean={s.p_mean}, loss.{name}.p_std={s.p_std}; need numbers with p_std > 0")
    _require(loss.pairs.sampler in SAMPLER_NAMES, f"loss.pairs.sampler={loss.pairs.sampler}; allowed: {', '.join(SAMPLER_NAMES)}")
    _check_positive(loss.pairs, "loss.pairs", ("num_pairs", "num_steps", "batch_size"))
    return needs


def check_gan_real_side(cfg: DictConfig, gan: bool) -> None:
    """A text teacher's GAN needs real images it knows the prompts of: captioned images, or prompts that name the
    images' classes (data=mnist_sd); refused here, before any work, where a folder says it has no captions."""
    prompts = cfg.data.get("prompts")
    if not gan or prompts is None or prompts.source == "mnist_captions":
        return
    from distill.tasks import no_captions_message
    from teachers.data import has_captions

    if has_captions(cfg.data) is False:
        raise ConfigError(no_captions_message(cfg.data))


def check_student(student: DictConfig) -> None:
    """One step with sigmas null (= [sigma_max]), or k steps on a fixed, decreasing, positive sigma list of length k."""
    k, sigmas = student.num_steps, student.sigmas
    _require(_is_int(k) and k >= 1, f"student.num_steps={k}; it must be an integer >= 1 (DMD2 uses 1, 2 or 4)")
    if sigmas is None:
        _require(k == 1, f"student.num_steps={k} needs a sigma list: set student.sigmas to {k} decreasing noise levels "
                         "(e.g. student=four_step), the first being the input noise level")
        return
    values = list(sigmas)
    _require(all(is_number(v) for v in values),
             f"student.sigmas={values}; it must be a list of numbers")
    _require(len(values) == k, f"student.sigmas={values} has {len(values)} entries but student.num_steps={k}")
    _require(all(v > 0 for v in values), f"student.sigmas={values}; every sigma must be > 0")
    _require(all(a > b for a, b in zip(values, values[1:])), f"student.sigmas={values}; it must be strictly decreasing")


def check_step_sigma(loss: DictConfig, student: DictConfig) -> None:
    """The multi-step options are booleans; with loss.sigma_up_to_student_step every student sigma is above loss.sigma.min."""
    for key in ("sigma_up_to_student_step", "gan_last_step_only", "last_step_only", "step_aware_fake_score"):
        _require(isinstance(loss[key], bool), f"loss.{key}={loss[key]}; use true or false")
    flag = loss.sigma_up_to_student_step
    if flag and student.sigmas is not None:
        _require(min(student.sigmas) > loss.sigma.min,
                 f"loss.sigma_up_to_student_step=true with student.sigmas={list(student.sigmas)}: every step's DMD noise "
                 f"range [loss.sigma.min, its sigma] needs its sigma > loss.sigma.min={loss.sigma.min}")


def check_train(train: DictConfig, student: DictConfig) -> None:
    """Step counts, batch sizes, clipping and EMA; the student's steps."""
    check_student(student)
    _require(_is_int(train.max_steps) and train.max_steps >= 0, f"train.max_steps={train.max_steps}; it must be an integer >= 0")
    minutes = train.get("max_minutes")
    _require(minutes is None or (is_number(minutes) and minutes > 0), f"train.max_minutes={minutes}; use null or a number > 0")
    for key in POSITIVE_INT_TRAIN_KEYS:
        _require(_is_int(train[key]), f"train.{key}={train[key]}; it must be an integer")
    _check_positive(train, "train", POSITIVE_INT_TRAIN_KEYS)
    _require(train.grad_clip is None or train.grad_clip > 0, f"train.grad_clip={train.grad_clip}; use null or a number > 0")
    reuse = train.reuse_student_samples
    _require(isinstance(reuse, bool), f"train.reuse_student_samples={reuse}; use true or false")
    _require(train.ema_decay is None or 0 <= train.ema_decay < 1, f"train.ema_decay={train.ema_decay}; use null or a number in [0, 1)")
    _require(_is_int(train.keep_last) and train.keep_last >= 1, f"train.keep_last={train.keep_last}; keep at least 1 checkpoint")
    _require(
        _is_int(train.max_consecutive_skips) and train.max_consecutive_skips >= 1,
        f"train.max_consecutive_skips={train.max_consecutive_skips}; it must be an integer >= 1",
    )
    precision = train.mixed_precision
    _require(precision in MIXED_PRECISIONS, f"train.mixed_precision={precision}; allowed: {', '.join(MIXED_PRECISIONS)}")
    if precision == "fp16":
        import torch

        _require(torch.cuda.is_available(), "train.mixed_precision=fp16 needs a GPU (fp16 autocast on a CPU is not supported); use bf16 or no")
    _require(isinstance(train.gradient_checkpointing, bool), f"train.gradient_checkpointing={train.gradient_checkpointing}; use true or false")
    for key in ("resume_from", "init_from"):
        if train.get(key) is not None:
            from distill.checkpoint import CorruptCheckpoint, verify

            try:
                verify(Path(train[key]))
            except CorruptCheckpoint as err:
                raise ConfigError(f"train.{key}={train[key]} cannot be loaded: {err}") from None


def check_lora(lora: DictConfig | None) -> None:
    """lora.rank null (full weights) or an integer >= 1, with alpha > 0 and at least one target."""
    if lora is None or lora.rank is None:
        return
    _require(_is_int(lora.rank) and lora.rank >= 1, f"lora.rank={lora.rank}; use null (full weights) or an integer >= 1")
    _require(is_number(lora.alpha) and lora.alpha > 0, f"lora.alpha={lora.alpha}; it must be a number > 0")
    _require(len(lora.targets) > 0 and all(isinstance(t, str) for t in lora.targets),
             f"lora.targets={list(lora.targets)}; name at least one layer (e.g. to_q, to_k, to_v, to_out.0)")
    _require(isinstance(lora.fake_score, bool), f"lora.fake_score={lora.fake_score}; use true or false")


def check_optim(optim: DictConfig) -> None:
    """Learning rates, AdamW's betas and weight decay, and the learning-rate schedule."""
    _check_positive(optim, "optim", ("student_lr", "fake_lr", "gan_head_lr"))
    betas = list(optim.betas)
    _require(len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
             f"optim.betas={betas}; it must be two numbers in [0, 1)")
    _require(is_number(optim.weight_decay) and optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay}; it must be a number >= 0")
    _require(isinstance(optim.fused, bool), f"optim.fused={optim.fused}; use true or false")
    _require(optim.lr_schedule in LR_SCHEDULES, f"optim.lr_schedule={optim.lr_schedule}; allowed: {', '.join(LR_SCHEDULES)}")
    _require(is_number(optim.min_lr_ratio) and 0 <= optim.min_lr_ratio <= 1,
             f"optim.min_lr_ratio={optim.min_lr_ratio}; it must be a number in [0, 1]")


def check_eval(eval_cfg: DictConfig, kind: str) -> None:
    """Sample counts and the teacher's samplers."""
    if kind == "toy":
        _check_positive(eval_cfg, "eval", ("num_samples", "mmd_max_samples", "mode_recall_share"))
        _require(0 < eval_cfg.mode_radius_quantile < 1, f"eval.mode_radius_quantile={eval_cfg.mode_radius_quantile}; it must be in (0, 1)")
    else:
        _require("reference_split" in eval_cfg, "image data needs image evaluation: add eval=fid")
        _check_positive(eval_cfg, "eval", ("num_samples", "batch_size"))
        _require(eval_cfg.reference_split in REFERENCE_SPLITS, f"eval.reference_split={eval_cfg.reference_split}; allowed: {', '.join(REFERENCE_SPLITS)}")
        _require(len(eval_cfg.teacher_samplers) > 0, "eval.teacher_samplers is empty; FID is measured against the teacher's full sampler")
    for spec in eval_cfg.teacher_samplers:
        _require(spec.name in SAMPLER_NAMES, f"eval.teacher_samplers name={spec.name}; allowed: {', '.join(SAMPLER_NAMES)}")
        _require(spec.num_steps >= 1, f"eval.teacher_samplers num_steps={spec.num_steps}; it must be >= 1")


def check_domain_labels(data: DictConfig, eval_cfg: DictConfig) -> None:
    """The domain classifier trains on class labels: an image folder without class subfolders has none."""
    if eval_cfg.feature_extractor != "domain" or eval_cfg.get("classifier_path") or data.source != "folder" or OmegaConf.is_missing(data, "path"):
        return
    folder = Path(str(data.path))
    if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()):
        from eval.features import UNLABELLED

        raise ConfigError(f"data.path={folder}: {UNLABELLED}")


# What `accelerate launch --config_file` sets for the distributed types this toolkit does not run.
UNSUPPORTED_LAUNCHES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
SUPPORTED_LAUNCHES = ("DDP over any number of processes (configs/accelerate/ddp.yaml, cpu.yaml, or torchrun), FSDP2 "
                      "(configs/accelerate/fsdp.yaml) and one process")


def env_flag(environ, variable: str) -> bool:
    """An environment variable that `accelerate launch` sets to true (or 1)."""
    return environ.get(variable, "false").lower() in ("true", "1")


def check_launch(lora: DictConfig | None, environ=os.environ) -> None:
    """Refuse a launch with an accelerate config this toolkit does not support, naming it and what is supported:
    DeepSpeed, Megatron-LM, FSDP version 1 (its flat parameters hide the networks the loss terms read), FSDP with LoRA
    (peft's adapters beside frozen base weights in one sharded unit: not built)."""
    for variable, name in UNSUPPORTED_LAUNCHES.items():
        if env_flag(environ, variable):
            raise ConfigError(f"accelerate launch with {name} ({variable}={environ[variable]}, from its --config_file) is not "
                              f"supported; supported: {SUPPORTED_LAUNCHES}")
    if not env_flag(environ, "ACCELERATE_USE_FSDP"):
        return
    version = environ.get("FSDP_VERSION", "1")
    _require(version == "2", f"accelerate launch with FSDP version {version} (FSDP_VERSION, from its --config_file) is not "
                             f"supported; set fsdp_config.fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    _require(lora is None or lora.get("rank") is None, f"lora.rank={None if lora is None else lora.get('rank')} under FSDP is "
             "not supported; train full weights under FSDP (lora.rank=null), or LoRA under DDP (configs/accelerate/ddp.yaml)")


def check(cfg: DictConfig, vp_tables: bool = True) -> Family:
    """Every check of a distillation config; returns the teacher's family (recorded in cfg.teacher.family). Needs no
    torch with vp_tables=False (the entry point's check before its heavy imports): a DDPM table's sigma range is then
    checked by validate, after them."""
    check_launch(cfg.get("lora"))
    _require(_is_int(cfg.seed), f"seed={cfg.seed}; it must be an integer")
    _require(isinstance(cfg.deterministic, bool), f"deterministic={cfg.deterministic}; use true or false")
    kind = cfg.data.kind
    trained_here = cfg.teacher.path is None and cfg.teacher.get("kind") in ("mlp", "unet")  # latent teachers are never trained in the run
    for key in ("guidance_scale", "fake_guidance_scale"):
        if cfg.loss[key] != 1 and trained_here and not cfg.teacher.get("net", {}).get("class_conditional"):
            raise ConfigError(f"loss.{key}={cfg.loss[key]} needs a class-conditional teacher; "
                              f"the teacher trained in this run is unconditional (use loss.{key}=1)")
    if kind == "image":
        family = check_image_teacher(cfg.teacher, cfg.data)
    else:
        _require(cfg.teacher.get("kind", "mlp") == "mlp", f"teacher={cfg.teacher.kind} needs image data (data=mnist|digits|...)")
        means, _, _ = mixture_lists(cfg.data.means, cfg.data.stds, cfg.data.weights)
        family = check_teacher(cfg.teacher, len(means[0]))
    with open_dict(cfg.teacher):
        cfg.teacher.family = family.name  # recorded in config.yaml: export, eval and serve load with it
    if cfg.teacher.get("path") is not None:
        for key in ("guidance_scale", "fake_guidance_scale"):
            family.check_guidance(cfg.teacher.path, cfg.loss[key], f"loss.{key}")
    check_sigma_ranges(cfg, teacher_sigma_range(cfg, vp_tables), fill=vp_tables)
    needs = check_loss(cfg.loss)
    check_gan_real_side(cfg, needs.critic)
    check_train(cfg.train, cfg.student)
    check_step_sigma(cfg.loss, cfg.student)
    check_optim(cfg.optim)
    check_lora(cfg.get("lora"))
    check_eval(cfg.eval, kind)
    if kind == "image":
        check_domain_labels(cfg.data, cfg.eval)
    return family


def validate(cfg: DictConfig):
    """Every check of a distillation config (sigma ranges from DDPM tables included); returns the task (toy mixture,
    image or latent data)."""
    from distill.tasks import ImageTask, LatentTask, ToyTask
    from teachers.gmm import mixture_from_lists

    family = check(cfg)
    if cfg.data.kind != "image":
        return ToyTask(mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights))
    return LatentTask(cfg.data) if family.latent else ImageTask(cfg.data)
