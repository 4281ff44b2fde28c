"""The diffusers UNet adapter: sigma <-> timestep, eps / v / sample against the scheduler's own step, copies, files."""
import pytest
import torch
from conftest import tiny_unet_denoiser
from diffusers import DDIMScheduler, DDPMPipeline

from distill.generator import StudentGenerator, trainable_copy
import teachers
from teachers.io import save_pretrained_atomic
from teachers.vp import sigma_to_t, t_to_sigma


def test_sigma_timestep_mapping_round_trips():
    teacher = tiny_unet_denoiser()
    table = teacher.sigmas
    t = torch.arange(len(table), dtype=torch.float32)
    torch.testing.assert_close(sigma_to_t(table, table), t, atol=1e-3, rtol=0)
    t_cont = torch.rand(200) * (len(table) - 1)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t_cont, table), table), t_cont, atol=1e-3, rtol=0)
    sigma = torch.exp(torch.empty(200).uniform_(table[0].log().item(), table[-1].log().item()))
    torch.testing.assert_close(t_to_sigma(sigma_to_t(sigma, table), table), sigma, rtol=1e-4, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_adapter_step_equals_the_diffusers_ddim_step(prediction_type):
    """DDIM is Euler on the PF-ODE in sigma (Karras et al. 2022, sec. 3): one step of each must agree."""
    teacher = tiny_unet_denoiser(prediction_type)
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(10)
    t, t_prev = scheduler.timesteps[2], scheduler.timesteps[3]
    abar, abar_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    x_vp = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = scheduler.step(teacher.unet(x_vp, t).sample, t, x_vp, eta=0.0).prev_sample
    sigma, sigma_prev = ((1 - abar) / abar).sqrt(), ((1 - abar_prev) / abar_prev).sqrt()
    x = x_vp / abar.sqrt()  # EDM's x = x0 + sigma eps
    with torch.no_grad():
        x0 = teacher(x, sigma)
    x_prev = x0 + sigma_prev * (x - x0) / sigma
    torch.testing.assert_close(x_prev * abar_prev.sqrt(), expected, atol=1e-4, rtol=1e-4)


def test_student_copy_reproduces_the_teacher_at_sigma_max():
    teacher = tiny_unet_denoiser(num_classes=3)
    student = StudentGenerator(trainable_copy(teacher))
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        sigma_max = torch.tensor(teacher.sigma_max)  # float32, as the generator holds it
        expected = teacher(z * sigma_max, sigma_max.expand(4), labels)
        # Bitwise-equal weights; the outputs differ only by float32 rounding (oneDNN kernels depend on memory layout).
        torch.testing.assert_close(student(z, labels), expected, rtol=1e-5, atol=1e-6)
    for (name, p_student), p_teacher in zip(student.denoiser.named_parameters(), teacher.parameters()):
        assert torch.equal(p_student, p_teacher), name
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_class_labels_change_the_prediction():
    teacher = tiny_unet_denoiser(num_classes=3)
    torch.nn.init.normal_(teacher.unet.class_embedding.weight, std=1.0)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        assert not torch.allclose(teacher(x, sigma, torch.tensor([0, 0])), teacher(x, sigma, torch.tensor([1, 1])))
    assert teacher.num_classes == 3 and teacher.null_class == 3


def test_saved_teacher_is_a_diffusers_pipeline_and_loads_back(tmp_path):
    teacher = tiny_unet_denoiser("epsilon")
    teacher.sigma_data = 0.7
    path = save_pretrained_atomic(teacher, tmp_path / "teacher")
    loaded = teachers.load(path)
    assert (loaded.sigma_data, loaded.sigma_max, loaded.prediction_type) == (0.7, teacher.sigma_max, "epsilon")
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), teacher(x, sigma))
    assert isinstance(DDPMPipeline.from_pretrained(path), DDPMPipeline)


def test_a_zero_terminal_snr_schedule_is_refused_with_a_message():
    from diffusers import DDPMScheduler

    from teachers.errors import ConfigError
    from teachers.unet import UNetDenoiser

    with pytest.raises(ConfigError, match="zero-terminal-SNR.*sigma_max is infinite"):
        UNetDenoiser(tiny_unet_denoiser().unet, DDPMScheduler(rescale_betas_zero_snr=True))


def test_a_null_class_that_is_not_the_last_embedding_is_refused():
    from teachers.errors import ConfigError
    from teachers.unet import UNetDenoiser

    teacher = tiny_unet_denoiser(num_classes=3)  # 4 embeddings, the null class is 3
    with pytest.raises(ConfigError, match="null_class=1.*must be its last class embedding, 3"):
        UNetDenoiser(teacher.unet, teacher.scheduler, null_class=1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_below_the_tables_first_sigma_the_denoiser_is_the_one_at_that_sigma(prediction_type):
    """The timestep, the input scaling and the x0 conversion clamp together (before, only the timestep did)."""
    teacher = tiny_unet_denoiser(prediction_type)
    x, first = torch.randn(2, 1, 8, 8), float(teacher.sigmas[0])
    torch.testing.assert_close(teacher(x, first / 5), teacher(x, first))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_auto_fake_score_weighting_is_the_mse_of_what_the_network_predicts(prediction_type):
    """w(sigma) ||x0_pred - x0||^2 with the adapter's own weighting equals the MSE of its eps, v or x0 output (DMD2's
    fake score: eps-MSE for an eps teacher)."""
    from teachers.loss import weighted_denoising_error

    teacher = tiny_unet_denoiser(prediction_type)
    x0, noise, sigma = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0.05, 0.7, 6.0, 60.0])
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0 + s * noise
    with torch.no_grad():
        x0_pred = teacher(x, sigma)
        output = teacher.unet(x / (1 + s**2).sqrt(), sigma_to_t(sigma, teacher.sigmas)).sample  # the raw eps, v or x0
    a, b = 1 / (1 + s**2).sqrt(), s / (1 + s**2).sqrt()  # VP: x_vp = a x0 + b eps
    target = {"epsilon": noise, "v_prediction": a * noise - b * x0, "sample": x0}[prediction_type]
    expected = ((output - target) ** 2).flatten(1).mean(1)
    got = weighted_denoising_error(x0_pred, x0, sigma, teacher.sigma_data, teacher.loss_weighting)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)
