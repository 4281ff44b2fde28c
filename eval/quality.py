"""Figures beside FID that say how far to trust it: FID's bootstrap interval, KID, precision / recall /
density / coverage. A student "beats its teacher" only where these agree beyond their error bars."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch

from eval.fid import Stats, fid, stats_of


def fid_bootstrap_interval(features: np.ndarray, reference: Stats, num_resamples: int, seed: int, z: float = 1.96) -> list[float]:
    """FID +- z bootstrap standard errors: the spread of FID over resamples of the samples' features (with
    replacement), reference fixed. Not the resamples' percentiles: duplicated samples shrink the covariance and push
    every resample's FID up (by ~0.5 at 2,000 samples in 128-D), so a percentile interval can miss the FID itself."""
    rng, n = np.random.default_rng(seed), len(features)
    values = [fid(stats_of(features[rng.integers(n, size=n)]), reference) for _ in range(num_resamples)]
    centre, se = fid(stats_of(features), reference), float(np.std(values, ddof=1))
    return [centre - z * se, centre + z * se]


def kid_torchmetrics(features_real: np.ndarray, features_fake: np.ndarray, *, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) through torchmetrics on features (N, D) of one extractor: mean and std over `subsets`
    random subsets of `subset_size` (at most the smaller set), seeded."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(features_real), len(features_fake))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # torchmetrics warns that KID keeps every feature in a buffer: these are evaluation-sized sets, by design.
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted features")
        torch.manual_seed(seed)  # torchmetrics draws its subsets from the global generator
        # The features as its "extractor" (an identity): they were extracted once, by each process for its share.
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=size, sync_on_compute=False)
        metric.update(torch.from_numpy(features_real), real=True)
        metric.update(torch.from_numpy(features_fake), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def prdc_figures(real_features: np.ndarray, fake_features: np.ndarray, *, k: int, max_samples: int, seed: int) -> dict[str, float]:
    """Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) through `prdc`,
    on at most max_samples of each set (a seeded subset: the pairwise distances are N x M)."""
    from prdc import compute_prdc

    rng = np.random.default_rng(seed)
    real, fake = (f[rng.permutation(len(f))[:max_samples]].astype(np.float32) for f in (real_features, fake_features))
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        figures = compute_prdc(real, fake, nearest_k=k)
    return {name: float(value) for name, value in figures.items()}


def quality_figures(reference: Stats, ref_features: np.ndarray, features: np.ndarray, eval_cfg) -> dict:
    """fid_ci95, kid and kid_std, precision, recall, density and coverage of one sampler's features vs the reference's."""
    out = {}
    if eval_cfg.bootstrap_resamples:
        out["fid_ci95"] = fid_bootstrap_interval(features, reference, eval_cfg.bootstrap_resamples, eval_cfg.seed)
    out["kid"], out["kid_std"] = kid_torchmetrics(ref_features, features, subsets=eval_cfg.kid_subsets,
                                                  subset_size=eval_cfg.kid_subset_size, seed=eval_cfg.seed)
    return out | prdc_figures(ref_features, features, k=eval_cfg.prdc_k, max_samples=eval_cfg.prdc_max_samples, seed=eval_cfg.seed)
