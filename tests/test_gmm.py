"""The analytic mixture: its denoiser is exact, its validation names bad values."""
import math

import pytest
import torch

from teachers.errors import ConfigError
from teachers.gmm import GMMDenoiser, mixture_from_lists


def test_single_gaussian_denoiser_matches_closed_form():
    # One mode N(mu, s^2): E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu).
    mix = mixture_from_lists([[1.0, -2.0]], [0.5], [1.0])
    x, sigma = torch.randn(16, 2), torch.full((16,), 2.0)
    expected = mix.means + 0.25 / (0.25 + 4.0) * (x - mix.means)
    torch.testing.assert_close(GMMDenoiser(mix)(x, sigma), expected)


def test_denoiser_returns_mode_mean_at_huge_sigma(ring4):
    # At sigma >> data scale every sample's posterior is the prior: D(x) -> sum_k w_k mu_k.
    x = torch.zeros(3, 2)
    expected = (ring4.weights[:, None] * ring4.means).sum(0).expand(3, 2)
    torch.testing.assert_close(GMMDenoiser(ring4)(x, 1e4), expected, atol=1e-3, rtol=0)


def test_mixture_std_matches_samples(ring4):
    samples = ring4.sample(200_000)
    assert math.isclose(ring4.std, float(samples.var(0).mean().sqrt()), rel_tol=0.01)


@pytest.mark.parametrize(
    ("means", "stds", "weights", "message"),
    [
        ([[0, 0], [1, 1]], [0.1, 0.1], [0.7, 0.7], "sum to 1.4"),
        ([[0, 0], [1, 1]], [0.1, 0.1], [1.2, -0.2], "contains -0.2"),
        ([[0, 0], [1, 1, 1]], [0.1, 0.1], [0.5, 0.5], r"dimensions \[2, 3\]"),
        ([[0, 0], [1, 1]], [0.1], [0.5, 0.5], "data.stds has 1 entries"),
        ([[0, 0], [1, 1]], [0.1, -0.3], [0.5, 0.5], "contains -0.3"),
        ([[0, 0], [1, 1]], [0.1, 0.1], [1.0], "data.weights has 1 entries"),
        ([], [], [], "empty"),
    ],
)
def test_bad_mixtures_name_the_value(means, stds, weights, message):
    with pytest.raises(ConfigError, match=message):
        mixture_from_lists(means, stds, weights)
