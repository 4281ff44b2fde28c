"""Classifier-free guidance on the real score: uncond + w (cond - uncond), and a clear error without classes."""
import pytest
import torch
from conftest import tiny_unet_denoiser

from teachers.errors import ConfigError
from teachers.guidance import GuidedDenoiser


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guidance_equals_uncond_plus_w_times_the_difference(scale):
    teacher = tiny_unet_denoiser(num_classes=3)
    torch.nn.init.normal_(teacher.unet.class_embedding.weight, std=1.0)
    x, sigma, labels = torch.randn(4, 1, 8, 8), torch.tensor([0.3, 1.0, 5.0, 20.0]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = teacher(x, sigma, labels), teacher(x, sigma, torch.full((4,), 3))
        guided = GuidedDenoiser(teacher, scale)(x, sigma, labels)
    torch.testing.assert_close(guided, uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, uncond)


def test_guidance_on_an_unconditional_teacher_is_refused():
    with pytest.raises(ConfigError, match="loss.guidance_scale=2.0 needs a class-conditional teacher"):
        GuidedDenoiser(tiny_unet_denoiser(), 2.0)


def test_lsg_fake_score_is_guided_in_training_and_where_the_student_reads_it():
    """loss.fake_guidance_scale (SiD-LSG): the critic's x0 is the fake score's guided output, with gradients into its
    weights (its training) and its input (SiD's generator loss); 1 is the fake score itself."""
    from distill.gan import Critic

    fake = tiny_unet_denoiser(num_classes=3).requires_grad_(True)
    torch.nn.init.normal_(fake.unet.class_embedding.weight, std=1.0)
    x, sigma, labels = torch.randn(4, 1, 8, 8, requires_grad=True), torch.tensor([0.3, 1.0, 5.0, 20.0]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        expected = GuidedDenoiser(fake, 2.0)(x, sigma, labels)
        torch.testing.assert_close(Critic(fake, None)(x, sigma, labels), fake(x, sigma, labels))
    guided = Critic(fake, None, guidance_scale=2.0)(x, sigma, labels)
    torch.testing.assert_close(guided, expected)
    guided.square().sum().backward()
    assert x.grad is not None and fake.unet.class_embedding.weight.grad.abs().sum() > 0


def test_lsg_on_an_unconditional_teacher_is_refused():
    from teachers.guidance import check_guidable

    with pytest.raises(ConfigError, match="loss.fake_guidance_scale=2.0 needs a class-conditional teacher"):
        check_guidable(tiny_unet_denoiser(), 2.0, "loss.fake_guidance_scale")
