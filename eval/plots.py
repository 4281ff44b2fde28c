"""Scatter sheets of toy samples: data, teacher and student side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def projection_2d(reference: np.ndarray) -> np.ndarray:
    """(D, 2) matrix onto the reference's two leading principal axes (identity for 2-D data)."""
    if reference.shape[1] <= 2:
        return np.eye(reference.shape[1], 2)
    centred = reference - reference.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:2].T


def scatter_panels(panels: dict[str, np.ndarray], path: Path, reference: np.ndarray, max_points: int = 5000) -> Path:
    """One scatter panel per sample set (N, D), all on the reference's axes and limits; writes a PNG."""
    proj = projection_2d(reference)
    ref2 = reference @ proj
    lo, hi = ref2.min(0), ref2.max(0)
    pad = 0.15 * (hi - lo) + 1e-6
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels.items()):
        pts = points[:max_points] @ proj
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set(title=title, xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]))
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=6)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Tight layout, PNG at 120 dpi (parent folders made), figure closed."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def line_plot(rows: list[dict], x_key: str, y_key: str, path: Path) -> Path:
    """y_key against x_key, one line per rows' "sampler" (a text x_key, e.g. experiment, gives one tick per value in order)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = list(dict.fromkeys(str(r[x_key]) for r in rows))
    numeric = all(isinstance(r[x_key], (int, float)) for r in rows)
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        points = [(r[x_key] if numeric else labels.index(str(r[x_key])), r[y_key]) for r in rows
                  if r["sampler"] == sampler and r[y_key] is not None]
        ax.plot(*zip(*sorted(points)), marker="o", label=sampler)
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    values = [r[y_key] for r in rows if isinstance(r[y_key], (int, float))]
    if values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")  # one failed run must not flatten the others
    ax.set(xlabel=x_key, ylabel=y_key)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
