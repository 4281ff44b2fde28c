"""DMD math against known answers on analytic mixtures, whose scores are exact."""
import pytest
import torch

from distill.gan import Critic
from distill.losses import dmd_gradient, dmd_loss, regression_loss
from teachers.base import score
from teachers.gmm import GMMDenoiser, mixture_from_lists


def test_dmd_gradient_is_zero_when_fake_equals_real(ring4):
    real = GMMDenoiser(ring4)
    x = ring4.sample(64)
    sigma = torch.full((64,), 0.7)
    x_t = x + 0.7 * torch.randn_like(x)
    assert torch.count_nonzero(dmd_gradient(x, real(x_t, sigma), Critic(real, None)(x_t, sigma))) == 0


def test_dmd_gradient_equals_analytic_score_difference(ring4):
    # D_fake is the exact denoiser of a shifted mixture: grad = (s_fake - s_real) * sigma^2 / mean|x - x0_real|.
    shifted = mixture_from_lists((ring4.means + 0.3).tolist(), ring4.stds.tolist(), ring4.weights.tolist())
    real, fake = GMMDenoiser(ring4), GMMDenoiser(shifted)
    x = ring4.sample(128)
    sigma = torch.rand(128) * 2 + 0.1
    x_t = x + sigma[:, None] * torch.randn_like(x)
    x0_real, x0_fake = real(x_t, sigma), fake(x_t, sigma)
    grad = dmd_gradient(x, x0_real, x0_fake)
    score_diff = score(x0_fake, x_t, sigma) - score(x0_real, x_t, sigma)
    weighting = sigma[:, None] ** 2 / (x - x0_real).abs().mean(1, keepdim=True)
    torch.testing.assert_close(grad, score_diff * weighting, rtol=1e-4, atol=1e-5)
    assert grad.abs().max() > 1e-2  # the two mixtures really differ


def test_dmd_loss_gradient_equals_dmd_gradient_over_the_element_count():
    x = torch.randn(8, 3, requires_grad=True)
    grad = torch.randn(8, 3)
    dmd_loss(x, grad).sum().backward()
    torch.testing.assert_close(x.grad, grad / 3)  # the mean over a sample's 3 elements


def test_dmd_loss_is_per_sample():
    x, grad = torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    loss = dmd_loss(x, grad)
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, 0.5 * (grad**2).flatten(1).mean(1))


@pytest.mark.parametrize("distance", ["l2", "pseudo_huber"])
def test_regression_loss_zero_on_target_and_grows(distance):
    y = torch.randn(4, 2)
    assert torch.all(regression_loss(y, y, distance) == 0)
    near, far = regression_loss(y + 0.1, y, distance), regression_loss(y + 1.0, y, distance)
    assert torch.all(far > near) and torch.all(near > 0)


def test_regression_loss_rejects_unknown_distance():
    with pytest.raises(ValueError, match="lpips_typo"):
        regression_loss(torch.zeros(1, 2), torch.zeros(1, 2), "lpips_typo")
