"""Loss terms: SiD against known answers on analytic mixtures (exact scores), every preset's gradients unchanged by
the move from summed to averaged losses, and the terms' config checks."""
import pytest
import torch
import torch.nn.functional as F

from distill.config import check_loss, check_terms, loss_terms
from distill.losses import sid_loss
from distill.steps import weighted_sum
from distill.terms import SiD, build_terms
from teachers.errors import ConfigError
from teachers.gmm import GMMDenoiser, mixture_from_lists
from conftest import compose_config


def shifted(mixture, delta: torch.Tensor):
    """The mixture translated by delta: a student whose samples are the data's plus delta."""
    return mixture_from_lists((mixture.means + delta).tolist(), mixture.stds.tolist(), mixture.weights.tolist())


def sid_grad_wrt_shift(mixture, delta: torch.Tensor, n: int = 4096, alpha: float = 1.2) -> torch.Tensor:
    """d(SiD loss)/d(delta) for G(z) = data sample + delta, the fake score the exact denoiser of G's distribution
    (read at the current delta: SiD differentiates through the scores' inputs, not their weights)."""
    real, fake = GMMDenoiser(mixture), GMMDenoiser(shifted(mixture, delta))
    shift = delta.clone().requires_grad_()
    x = mixture.sample(n) + shift
    sigma = torch.rand(n) * 2 + 0.05
    x_t = x + sigma[:, None] * torch.randn_like(x)
    sid_loss(x, real(x_t, sigma), fake(x_t, sigma), alpha).mean().backward()
    return shift.grad


def test_sid_gradient_vanishes_when_the_student_is_the_data(ring4):
    grad = sid_grad_wrt_shift(ring4, torch.zeros(2))
    torch.testing.assert_close(grad, torch.zeros(2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [1.0, 1.2])
def test_sid_moves_a_shifted_student_back_toward_the_data(ring4, alpha):
    """G's samples sit at data + delta: gradient descent on SiD moves delta toward 0 (the gradient points along delta)."""
    for delta in (torch.tensor([0.3, 0.0]), torch.tensor([-0.2, 0.25])):
        grad = sid_grad_wrt_shift(ring4, delta, alpha=alpha)
        cosine = F.cosine_similarity(grad, delta, dim=0)
        assert cosine > 0.8, (delta, grad)  # descent (-grad) points back toward the data


def test_sid_loss_is_per_sample_and_differs_from_dmd_only_through_the_scores():
    x, real, fake = torch.randn(6, 3, 4), torch.randn(6, 3, 4), torch.randn(6, 3, 4)
    loss = sid_loss(x, real, fake, 1.2)
    assert loss.shape == (6,)
    d = real - fake
    expected = ((-0.2 * d**2 + d * (fake - x)).flatten(1).mean(1)) / (x - real).abs().flatten(1).mean(1)
    torch.testing.assert_close(loss, expected)


# Each preset's weights before the terms (dmd, regression, gan_generator; DMD and regression summed over elements then)
# and its elements per sample.
OLD_WEIGHTS = {
    "toy_gmm": (1.0, 0.25, 0.0, 2), "toy_grid25": (1.0, 0.25, 0.0, 2), "toy_16d": (1.0, 0.25, 0.0, 16),
    "mnist": (1.0, 1.0, 0.0, 784), "mnist_cond": (1.0, 1.0, 0.0, 784), "mnist_no_regression": (1.0, 0.0, 0.0, 784),
    "mnist_ttur": (1.0, 0.0, 0.0, 784), "mnist_ttur_fast": (1.0, 0.0, 0.0, 784), "mnist_dmd2": (1.0, 0.0, 2.35, 784),
    "mnist_dmd2_fast": (1.0, 0.0, 2.35, 784), "mnist_dmd2_4step": (1.0, 0.0, 2.35, 784),
    "mnist_dmd2_cond": (1.0, 0.0, 2.35, 784), "demo": (1.0, 0.0, 2.35, 784),
    "mnist_sd": (1.0, 0.25, 0.0, 256), "mnist_sd_dmd2": (1.0, 0.0, 0.768, 256),
    "cifar10": (1.0, 0.25, 0.0, 3072), "cifar10_edm_dmd": (1.0, 0.25, 0.0, 3072), "cifar10_edm_dmd_uncond": (1.0, 0.25, 0.0, 3072),
    "cifar10_edm_dmd2": (1.0, 0.0, 3.072, 3072), "cifar10_edm_dmd2_uncond": (1.0, 0.0, 3.072, 3072),
    "imagenet64_edm_dmd2": (1.0, 0.0, 36.864, 12288), "dit_xl2_dmd2": (1.0, 0.0, 12.288, 4096),
    "sd15_dmd": (1.0, 0.25, 0.0, 16384), "sd15_dmd2": (1.0, 0.0, 0.0, 16384), "sd15_dmd2_gan": (1.0, 0.0, 16.384, 16384),
    "sdxl_dmd2": (1.0, 0.0, 327.68, 65536), "sdxl_dmd2_4step": (1.0, 0.0, 327.68, 65536),
}


class FixedReads:
    """A student term's reads with fixed draws: noise, both scores' outputs and the critic's logits (linear in x)."""

    def __init__(self, x, x_ref, y_ref, x0_real, x0_fake, w):
        self.x, self.x_ref, self.y_ref, self.x0_real, self.x0_fake, self.w = x, x_ref, y_ref, x0_real, x0_fake, w

    def noised(self, x):
        return x, None

    def scores(self, x_t, sigma, grad):
        return self.x0_real, self.x0_fake

    def gan_logits(self):
        return self.x @ self.w


def old_total(r: FixedReads, dmd: float, regression: float, gan: float) -> torch.Tensor:
    """The student loss before the terms: DMD's 0.5 ||x - sg(x - grad)||^2 and l2 regression summed over elements."""
    grad = (r.x0_fake - r.x0_real) / (r.x.detach() - r.x0_real).abs().mean(1, keepdim=True)
    total = dmd * (0.5 * ((r.x - (r.x.detach() - grad)) ** 2).sum(1)).mean()
    total = total + regression * ((r.x_ref - r.y_ref) ** 2).sum(1).mean()
    return total + gan * F.softplus(-r.gan_logits()).mean()


@pytest.mark.parametrize("preset", sorted(OLD_WEIGHTS))
def test_every_preset_keeps_its_gradients(preset):
    """The terms average over elements; each preset's weights are rescaled so its student gradients equal the old
    summed losses' on a fixed batch (the fake score's terms were means already)."""
    dmd, regression, gan, n = OLD_WEIGHTS[preset]
    student, _ = loss_terms(compose_config("train", [f"experiment={preset}"]).loss)
    torch.manual_seed(0)
    x, x_ref = torch.randn(4, n, requires_grad=True), torch.randn(4, n, requires_grad=True)
    reads = FixedReads(x, x_ref, torch.randn(4, n), torch.randn(4, n), torch.randn(4, n), torch.randn(n) / n**0.5)
    new, _ = weighted_sum(student, reads)
    new_grads = torch.autograd.grad(new, (x, x_ref), allow_unused=True)
    old_grads = torch.autograd.grad(old_total(reads, dmd, regression, gan), (x, x_ref), allow_unused=True)
    for new_grad, old_grad in zip(new_grads, old_grads):
        if old_grad is None or not old_grad.any():
            assert new_grad is None or not new_grad.any()
        else:
            torch.testing.assert_close(new_grad, old_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("overrides, message", [
    (["experiment=mnist_sid", "loss.student.sid.alpha=2.5"], r"loss.student.sid.alpha=2.5; SiD's alpha must be a number in \[0.0, 1.5\]"),
    (["loss.student.dmd.weight=-1"], r"loss.student.dmd.weight=-1(\.0)?; it must be a number >= 0"),
    (["loss.student.dmd.weight=0", "loss.student.regression.weight=0"], r"loss.student has no term with weight > 0"),
    (["loss.fake.denoising.weight=0"], r"read the fake score, but loss.fake has no term"),
    (["loss=dmd2", "loss.fake.gan_discriminator=null"], r"the GAN needs a generator term"),
    (["+loss.student.sid2={_target_: distill.terms.Denoising}"], r"loss.student.sid2 is a fake term \(Denoising\)"),
    (["loss.student.dmd._target_=distill.terms.Dmd"], r"_target_=distill.terms.Dmd is not a loss term; ours: distill.terms.DMD"),
    (["+loss.student.dmd.alpha=1"], r"loss.student.dmd: unknown key 'alpha'; DMD takes weight"),
    (["+loss.student.extra={weight: 1.0, _target_: null}"], r"loss.student.extra names no term class: give it a _target_"),
])
def test_bad_terms_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_terms(compose_config("train", ["experiment=toy_gmm", *overrides]).loss)  # the last experiment= wins


@pytest.mark.parametrize("overrides, message", [
    (["loss.fake_sigma.distribution=uniform"], r"loss.fake_sigma.distribution=uniform; allowed: ramp, lognormal"),
    (["loss.fake_guidance_scale=-1"], r"loss.fake_guidance_scale=-1(\.0)?; it must be a number >= 0"),
    (["loss.fake_guidance_scale=2", "loss.step_aware_fake_score=true"], r"with loss.step_aware_fake_score=true: the step"),
    (["loss.fake_sigma.p_std=0"], r"loss.fake_sigma.p_mean=-1.2, loss.fake_sigma.p_std=0(\.0)?; need numbers with p_std > 0"),
])
def test_bad_noise_draws_and_guidance_are_one_line_each(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_loss(compose_config("train", ["experiment=mnist_sid", *overrides]).loss)


def test_a_presets_weights_for_a_term_the_loss_group_leaves_out_are_ignored(caplog):
    """experiment=mnist scales DMD's and regression's weights; with loss=sid those terms are not there to scale."""
    student, fake = loss_terms(compose_config("train", ["experiment=mnist", "loss=sid"]).loss)
    assert list(student) == ["sid"] and list(fake) == ["denoising"]
    assert "loss.student.dmd: the loss group has no dmd term" in caplog.text


def test_regression_only_trains_no_fake_score_and_sid_needs_gradients_through_the_scores():
    student, fake = loss_terms(compose_config("train", ["experiment=toy_gmm", "loss=regression"]).loss)
    assert list(student) == ["regression"] and not student["regression"].needs.fake
    sid = build_terms({"sid": {"_target_": "distill.terms.SiD", "weight": 1.0}}, "student")["sid"]
    assert isinstance(sid, SiD) and sid.needs.through_scores and sid.alpha == 1.2
