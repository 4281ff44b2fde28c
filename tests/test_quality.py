"""Figures beside FID: each against a known answer on features we control."""
import numpy as np
import pytest
import torch

from eval.features import DomainClassifier, extract
from eval.fid import fid, stats_of
from eval.quality import fid_bootstrap_interval, kid_torchmetrics, prdc_figures


def test_bootstrap_interval_brackets_the_fid_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    reference = stats_of(rng.normal(size=(4000, 4)))
    few, many = rng.normal(0.3, 1, size=(200, 4)), rng.normal(0.3, 1, size=(4000, 4))
    lo_few, hi_few = fid_bootstrap_interval(few, reference, 200, seed=1)
    lo, hi = fid_bootstrap_interval(many, reference, 200, seed=1)
    assert (lo + hi) / 2 == pytest.approx(fid(stats_of(many), reference)) and lo < 4 * 0.3**2 < hi  # the true FID: 4 x 0.09
    assert 0 < hi - lo < hi_few - lo_few


def test_precision_recall_density_coverage_known_answers():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 3))
    same = prdc_figures(real, real.copy(), k=5, max_samples=500, seed=0)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = prdc_figures(real, real + 100.0, k=5, max_samples=500, seed=0)
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0
    # a collapsed student (every sample near one real point): precise, but it recalls and covers little
    collapsed = prdc_figures(real, real[:1] + 0.001 * rng.normal(size=(500, 3)), k=5, max_samples=500, seed=0)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.05 and collapsed["coverage"] < 0.05


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    torch.manual_seed(0)
    extractor = DomainClassifier(in_channels=1).eval()
    real, other_draw = torch.rand(300, 1, 8, 8) * 2 - 1, torch.rand(300, 1, 8, 8) * 2 - 1
    real_f, other_f, shifted_f = (extract(extractor, x) for x in (real, other_draw, (other_draw * 0.3 + 0.6).clamp(-1, 1)))
    same, same_std = kid_torchmetrics(real_f, other_f, subsets=20, subset_size=200, seed=0)
    shifted, _ = kid_torchmetrics(real_f, shifted_f, subsets=20, subset_size=200, seed=0)
    assert abs(same) < 3 * same_std + 1e-3 and shifted > 10 * abs(same)
    assert kid_torchmetrics(real_f, other_f, subsets=20, subset_size=200, seed=0)[0] == same  # seeded subsets
