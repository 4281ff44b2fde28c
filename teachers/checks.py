"""Checks of the teacher side of a config that need no torch: they run before the entry points' heavy imports, so a
bad value is refused within a second or two (issue 38). The families' modules call them too."""
from __future__ import annotations

import math

from teachers.errors import ConfigError

WEIGHT_SUM_TOL = 1e-6
LOSS_WEIGHTINGS = ("edm", "epsilon", "v_prediction", "sample", "flow")  # teachers.base.denoising_loss_weight's choices
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # teacher.dtype: teachers.latent.DTYPES


def _numbers(values, key: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{key} contains {list(values)}; only numbers are allowed") from None


def is_number(value) -> bool:
    """An int or float that is not a bool (YAML's true would pass isinstance(value, int))."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_seq(value) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str)


def mixture_lists(means, stds, weights) -> tuple[list[list[float]], list[float], list[float]]:
    """data.means, data.stds and data.weights (plain lists from a config or the command line) checked and as floats:
    points of one dimension >= 1, one finite std > 0 and one weight >= 0 per mode, weights summing to 1."""
    for key, value in (("data.means", means), ("data.stds", stds), ("data.weights", weights)):
        if not _is_seq(value):
            raise ConfigError(f"{key}={value} must be a list")
    if not means:
        raise ConfigError("data.means is empty; give at least one point, e.g. data.means=[[0,0]]")
    if not all(_is_seq(m) for m in means):
        raise ConfigError(f"data.means={list(means)} must be a list of points (lists of numbers), e.g. [[0,0],[1,1]]")
    means = [_numbers(m, "data.means") for m in means]
    dims = sorted({len(m) for m in means})
    if len(dims) != 1 or dims[0] == 0:
        raise ConfigError(f"data.means has points of dimensions {dims}; every point must have the same dimension >= 1")
    stds, weights = _numbers(stds, "data.stds"), _numbers(weights, "data.weights")
    for key, values in (("data.stds", stds), ("data.weights", weights)):
        if len(values) != len(means):
            raise ConfigError(f"{key} has {len(values)} entries but data.means has {len(means)} modes; give one per mode")
    bad_std = [s for s in stds if not (s > 0 and math.isfinite(s))]
    if bad_std:
        raise ConfigError(f"data.stds contains {bad_std[0]}; every std must be a finite number > 0")
    bad_weight = [w for w in weights if not (w >= 0 and math.isfinite(w))]
    if bad_weight:
        raise ConfigError(f"data.weights contains {bad_weight[0]}; every weight must be a finite number >= 0")
    if abs(sum(weights) - 1) > WEIGHT_SUM_TOL:
        raise ConfigError(f"data.weights sum to {sum(weights):.6g}; they must sum to 1 (within {WEIGHT_SUM_TOL})")
    if not all(math.isfinite(x) for m in means for x in m):
        raise ConfigError("data.means contains a non-finite number; every coordinate must be finite")
    return means, stds, weights


INT_KEYS = {"net": ("hidden_dim", "num_layers", "emb_dim"), "fit": ("max_steps", "batch_size")}


def check_mlp_teacher(teacher) -> None:
    """teacher=mlp trained in the run: teacher.net sizes and teacher.fit steps are integers >= 1; the learning rate and
    EMA decay are in range."""
    for section, keys in INT_KEYS.items():
        for key in keys:
            value = teacher[section][key]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"teacher.{section}.{key}={value}; it must be an integer >= 1")
    for key in ("lr", "p_mean", "p_std", "ema_decay"):
        value = teacher.fit[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"teacher.fit.{key}={value}; it must be a number")
    if not (teacher.fit.lr > 0 and teacher.fit.p_std > 0 and 0 <= teacher.fit.ema_decay < 1):
        raise ConfigError(
            f"teacher.fit lr={teacher.fit.lr}, p_std={teacher.fit.p_std}, ema_decay={teacher.fit.ema_decay}; "
            "need lr > 0, p_std > 0 and 0 <= ema_decay < 1"
        )


def check_dtype(name: str | None) -> None:
    """teacher.dtype: null (as stored) or a known precision."""
    if name is not None and name not in DTYPE_NAMES:
        raise ConfigError(f"teacher.dtype={name}; allowed: {', '.join(DTYPE_NAMES)}")


def check_sd_teacher(teacher, data) -> None:
    """teacher=sd's own settings, before any work: the data has prompts, a pipeline is given, the dtype is known."""
    if data.get("prompts") is None:
        raise ConfigError(f"teacher=sd is text-to-image but data={data.name} has no prompts; use data=mnist_sd, data=prompts "
                          "or set data.prompts")
    if teacher.path is None:
        raise ConfigError("teacher=sd needs teacher.path (a Stable Diffusion pipeline folder, zoo:mnist_sd or a hub id); "
                          "train the miniature one with `python -m teachers.train data=mnist teacher=sd_mini`")
    check_dtype(teacher.get("dtype"))


def _ddpm_betas(scheduler: dict) -> list[float] | None:
    """The betas of diffusers' DDPMScheduler for a config's beta schedule (linear, scaled_linear, squaredcos_cap_v2,
    sigmoid, or trained_betas), in float64; None for one not named here (teachers.vp computes those with diffusers)."""
    n = int(scheduler.get("num_train_timesteps", 1000))
    start, end = float(scheduler.get("beta_start", 0.0001)), float(scheduler.get("beta_end", 0.02))
    line = lambda a, b: [a + (b - a) * i / (n - 1) for i in range(n)] if n > 1 else [a]  # noqa: E731  (torch.linspace)
    schedule = scheduler.get("beta_schedule", "linear")
    if scheduler.get("trained_betas") is not None:
        return [float(b) for b in scheduler["trained_betas"]]
    if schedule == "linear":
        return line(start, end)
    if schedule == "scaled_linear":
        return [b**2 for b in line(start**0.5, end**0.5)]
    if schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999
        alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    if schedule == "sigmoid":
        return [start + (end - start) / (1 + math.exp(-x)) for x in line(-6.0, 6.0)]
    return None


def ddpm_sigma_range(scheduler: dict, extra: dict) -> tuple[float, float] | None:
    """(sigma_min, sigma_max) of a VP teacher's DDPM table, sigma = sqrt((1 - alpha_bar) / alpha_bar), without torch:
    for checking configured noise levels before the heavy imports (to float64 precision; teachers.vp.sigma_range is
    the float32 table the adapter runs on). None where only diffusers can say (another schedule, zero terminal SNR)."""
    betas = None if scheduler.get("rescale_betas_zero_snr") else _ddpm_betas(scheduler)
    if not betas:
        return None
    alpha_bar_first, alpha_bar_last = 1 - betas[0], math.prod(1 - b for b in betas)
    if alpha_bar_last <= 0:
        return None
    sigma = lambda a: math.sqrt((1 - a) / a)  # noqa: E731
    return sigma(alpha_bar_first), float(extra.get("sigma_max") or sigma(alpha_bar_last))


def flow_sigma_range(scheduler: dict) -> tuple[float, float]:
    """(sigma_min, inf) of a flow-matching teacher: sigma = t / (1 - t) at the scheduler's smallest t (its shift
    applied, as FlowMatchEulerDiscreteScheduler's table is, 1 / num_train_timesteps under a dynamic shift) and t = 1."""
    n = int(scheduler.get("num_train_timesteps", 1000))
    t, shift = 1 / n, float(scheduler.get("shift", 1.0))
    if not scheduler.get("use_dynamic_shifting"):
        t = shift * t / (1 + (shift - 1) * t)
    return t / (1 - t), math.inf
