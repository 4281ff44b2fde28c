"""Learning-rate decay over a run's budget (steps or wall-clock minutes, whichever runs out first)."""
from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "linear")


def budget_progress(step: int, max_steps: int, train_seconds: float, max_minutes: float | None) -> float:
    """Share of the budget spent, in [0, 1]: the larger of step / max_steps and minutes / max_minutes."""
    by_steps = step / max_steps if max_steps > 0 else 1.0
    by_time = train_seconds / (60 * max_minutes) if max_minutes else 0.0
    return min(1.0, max(by_steps, by_time))


def lr_factor(progress: float, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at `progress`: 1 at the start, min_ratio at the end."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":  # SGDR (Loshchilov & Hutter 2017) without restarts
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"optim.lr_schedule={schedule}; allowed: {', '.join(LR_SCHEDULES)}")


def set_lr_factor(optimizer, factor: float) -> None:
    """Every param group at factor x its base learning rate (kept in the group as `initial_lr`, as torch's schedulers do)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor
