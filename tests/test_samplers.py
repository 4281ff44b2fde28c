"""Samplers with the exact mixture denoiser reproduce the mixture."""
import torch

from eval.samplers import dpmpp_2m, euler, heun, karras_sigmas, sampler_nfe
from eval.toy_metrics import mode_shares
from teachers.gmm import GMMDenoiser


class CountingDenoiser:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.inner(x, sigma, cond)


def test_karras_sigmas_endpoints_and_order():
    sigmas = karras_sigmas(18, 0.002, 80.0)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[[0, -2]], torch.tensor([80.0, 0.002]))
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_heun_with_exact_denoiser_reproduces_moments_and_mode_weights(ring4):
    denoiser = GMMDenoiser(ring4)
    x = heun(denoiser, torch.randn(20_000, 2), karras_sigmas(32, 0.002, 80.0))
    data = ring4.sample(20_000)
    torch.testing.assert_close(x.mean(0), data.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(x.var(0), data.var(0), atol=0.1, rtol=0.05)
    shares = mode_shares(ring4, x, radius_quantile=0.999).float()
    torch.testing.assert_close(shares, ring4.weights, atol=0.02, rtol=0)


def test_euler_one_step_is_far_from_the_mixture(ring4):
    # One Euler step from sigma_max lands on the posterior mean, not on the modes: the gap distillation closes.
    x = euler(GMMDenoiser(ring4), torch.randn(2_000, 2), karras_sigmas(1, 0.002, 80.0))
    assert mode_shares(ring4, x, radius_quantile=0.999).sum() < 0.1


def test_nfe_counts_match_network_calls(ring4):
    for name, sampler in (("heun", heun), ("euler", euler), ("dpmpp_2m", dpmpp_2m)):
        counter = CountingDenoiser(GMMDenoiser(ring4))
        sampler(counter, torch.randn(4, 2), karras_sigmas(10, 0.002, 80.0))
        assert counter.calls == sampler_nfe(name, 10)


def test_dpmpp_2m_reaches_heuns_answer_with_fewer_evaluations(ring4):
    """Same ODE: DPM-Solver++(2M) at 24 NFE lands where Heun at 63 NFE does, far closer than Euler at 24 NFE."""
    denoiser, z = GMMDenoiser(ring4), torch.randn(2_000, 2)
    reference = heun(denoiser, z, karras_sigmas(32, 0.002, 80.0))
    err_dpm = (dpmpp_2m(denoiser, z, karras_sigmas(24, 0.002, 80.0)) - reference).norm(dim=1).median()
    err_euler = (euler(denoiser, z, karras_sigmas(24, 0.002, 80.0)) - reference).norm(dim=1).median()
    assert err_dpm < 0.02 and err_dpm < err_euler / 3
