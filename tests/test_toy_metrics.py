"""Toy metrics against known answers."""
import numpy as np
import torch

from eval.toy_metrics import fd, mmd_rbf, mode_recall, mode_shares, mode_weight_error


def test_fd_of_a_set_with_itself_is_zero_and_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50_000, 3))
    assert abs(fd(x, x)) < 1e-6
    # N(0, I) vs N(m, 4 I): ||m||^2 + tr(I + 4I - 2 * 2I) = ||m||^2 + 3.
    y = 2 * rng.standard_normal((50_000, 3)) + np.array([1.0, 0.0, 2.0])
    assert abs(fd(x, y) - (5.0 + 3.0)) < 0.15


def test_mmd_is_near_zero_for_same_distribution_and_large_for_different():
    x, y = torch.randn(2000, 2), torch.randn(2000, 2)
    assert abs(mmd_rbf(x, y)) < 5e-3
    assert mmd_rbf(x + 3, y) > 0.3


def test_mode_recall_and_weight_error_on_known_shares(ring4):
    # All samples in mode 0: recalled 1 mode of 4; TV to (0.4, 0.3, 0.2, 0.1) is 0.6.
    x = ring4.means[0] + 0.01 * torch.randn(1000, 2)
    shares = mode_shares(ring4, x, radius_quantile=0.999)
    assert shares.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert mode_recall(shares, ring4.weights, 0.5) == 0.25
    assert abs(mode_weight_error(shares, ring4.weights) - 0.6) < 1e-6  # weights are float32


def test_samples_between_modes_count_as_off_mode(ring4):
    x = torch.zeros(100, 2)  # the origin is 13+ stds from every mode
    shares = mode_shares(ring4, x, radius_quantile=0.999)
    assert shares.sum() == 0
    assert abs(mode_weight_error(shares, ring4.weights) - 1.0) < 1e-6
