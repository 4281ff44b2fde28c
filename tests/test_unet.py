"""The diffusers UNet adapter: sigma <-> timestep, eps / v / sample against the scheduler's own step, copies, files."""
import pytest
import torch
from conftest import tiny_unet_denoiser
from diffusers import DDIMScheduler, DDPMPipeline

from distill.generator import StudentGenerator, trainable_copy
from teachers.io import load_denoiser, save_pretrained_atomic
from teachers.unet import sigma_to_t, t_to_sigma


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
    loaded = load_denoiser(path)
    assert (loaded.sigma_data, loaded.sigma_max, loaded.prediction_type) == (0.7, teacher.sigma_max, "epsilon")
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma), teacher(x, sigma))
    assert isinstance(DDPMPipeline.from_pretrained(path), DDPMPipeline)
