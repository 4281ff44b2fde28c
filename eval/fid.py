"""FID pieces, apart (EDM fid.py, edm2 Detector): streaming statistics, a cache for the reference, fid(a, b)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import frechet_distance

from eval.cache import check_key, write_key
from teachers.io import write_folder_atomic


@dataclass(frozen=True)
class Stats:
    """Mean (D,) and covariance (D, D) of features, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    num: int


def stats_of(features: np.ndarray) -> Stats:
    """Gaussian fit of features (N, D): mean and unbiased covariance."""
    return Stats(features.mean(0), np.cov(features, rowvar=False), len(features))


def weighted_stats_of(features: np.ndarray, weights: np.ndarray) -> Stats:
    """Gaussian fit of features (N, D) with per-row weights >= 0: weighted mean, covariance with the unbiased
    (reliability-weights) factor, so uniform weights give stats_of exactly."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    mu = w @ features
    centred = features - mu
    return Stats(mu, (centred.T * w) @ centred / (1.0 - np.sum(w**2)), len(features))


def class_mix_weights(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-row weights that give each class (labels, ints) the share target[c] of the total weight: the re-weighting
    behind 'FID at another class mix'. A class with a target share but no rows gets nothing (its share is lost)."""
    counts = np.bincount(labels, minlength=len(target)).astype(np.float64)
    return np.asarray(target, dtype=np.float64)[labels] / counts[labels]


def frechet(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """clean-fid's Frechet distance, without the warnings it raises on its own handled paths: scipy's deprecation of
    the `disp` argument clean-fid 0.1.35 passes, and the singular-product warning on low-dimensional (128-D classifier)
    features, after which clean-fid itself adds eps to the diagonal and retries."""
    import warnings

    from scipy.linalg import LinAlgWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=LinAlgWarning)
        return float(frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def fid(a: Stats, b: Stats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017), through clean-fid; exactly 0 for
    identical statistics (sqrtm of a set with itself leaves ~1e-11)."""
    if np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma):
        return 0.0
    return frechet(a.mu, a.sigma, b.mu, b.sigma)


def save_stats(stats: Stats, path: Path, key: dict | None = None) -> Path:
    """Stats as stats.npz (and the key that defines them as key.json) in a cache folder, written atomically; a folder
    another process wrote first is kept."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        np.savez(tmp / "stats.npz", mu=stats.mu, sigma=stats.sigma, num=stats.num)
        if key is not None:
            write_key(tmp, key)

    return write_folder_atomic(path, write, keep_existing=True)


def load_stats(path: Path) -> Stats:
    """Stats from a folder written by save_stats."""
    data = np.load(Path(path) / "stats.npz")
    return Stats(data["mu"], data["sigma"], int(data["num"]))


def cached_stats(path: Path, compute, key: dict | None = None) -> Stats:
    """Reference statistics from the cache folder, computed once by compute() and stored there; with a key (what
    defines them: data content, split, extractor), a folder whose key.json differs is refused, never reused."""
    path = Path(path)
    if not (path / "stats.npz").is_file():
        save_stats(compute(), path, key)
    check_key(path, key)
    return load_stats(path)


def fid_torchmetrics(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The same FID through torchmetrics, from the same features (N, D): the cross-check of `fid`'s statistics and
    Frechet distance."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # The features as its "extractor" (an identity; it probes it with a (1, D) dummy to learn D). sync_on_compute=False:
    # the main process computes every figure of a multi-process evaluation; the others are not there to sync with.
    metric = FrechetInceptionDistance(feature=torch.nn.Identity(), input_img_size=(features_a.shape[1],), sync_on_compute=False)
    metric.update(torch.from_numpy(features_a), real=True)
    metric.update(torch.from_numpy(features_b), real=False)
    return float(metric.compute())
