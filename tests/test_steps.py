"""One fake-score step and one student step on tiny networks: who changes and who must not."""
import torch
from accelerate import Accelerator

from distill.gan import Critic
from distill.generator import StudentGenerator, trainable_copy
from distill.noise import sample_dmd_sigma
from distill.guard import any_process
from distill.steps import Batch, Draws, Networks, Settings, StepSampling, fake_step, scalars, student_step
from distill.terms import DMD, Denoising, GanDiscriminator, GanGenerator, Regression
from teachers.mlp import MLPDenoiser

SIGMA = {"min": 0.002, "max": 80.0, "rho": 7.0, "t_min": 0.02, "t_max": 0.98}
FAKE = {"denoising": Denoising(weighting="edm")}
FAKE_GAN = FAKE | {"gan_discriminator": GanDiscriminator(0.01)}
SETTINGS = Settings(batch_size=8, regression_batch_size=8, grad_clip=1.0, sigma_data=1.0)


def draws(generator, dim: int = 2) -> Draws:
    """The step's draws for a toy student: every range SIGMA."""
    ranges = {key: SIGMA for key in ("sigma", "fake_sigma", "gan_sigma")}
    return Draws(torch.device("cpu"), (dim,), generator, StepSampling(tuple(generator.sigmas)), ranges)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_steps_update_student_and_fake_and_never_the_teacher():
    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    generator = StudentGenerator(student)
    opt_g, opt_f = torch.optim.AdamW(student.parameters(), lr=1e-2), torch.optim.AdamW(fake.parameters(), lr=1e-2)
    accelerator = Accelerator(cpu=True)
    teacher_before, student_before, fake_before = _params(teacher), _params(student), _params(fake)

    logs = fake_step(Networks(accelerator, generator, Critic(fake, None)), opt_f, Batch(torch.randn(8, 2)),
                     sample_dmd_sigma(8, **SIGMA), FAKE, SETTINGS)
    assert _changed(fake_before, fake) and not _changed(student_before, student)
    z, z_ref = torch.randn(8, 2), torch.randn(8, 2) + 3.0  # the pairs' noise far from z, so their rows cannot pass for G(z)
    with torch.no_grad():
        x_before_update, x_ref_before_update = generator(z), generator(z_ref)
    student_logs, x = student_step(
        Networks(accelerator, generator, Critic(fake, None), real=teacher), opt_g, Batch(z), draws(generator),
        (z_ref, torch.randn(8, 2)), {"dmd": DMD(1.0), "regression": Regression(0.25)}, grad_clip=1.0,
    )
    logs |= student_logs
    assert _changed(student_before, student)
    # G(z) as made before the update. Made here in a batch of 8 and there in one call of 16 (z and the pairs' noise):
    # another batch size may take another BLAS kernel, so equal to float32 rounding, not bit for bit.
    torch.testing.assert_close(x, x_before_update, rtol=1e-5, atol=1e-6)
    assert (x - x_ref_before_update).abs().amax(dim=1).min() > 1e-3  # no row of x is a pair's G(z_ref)
    assert not x.requires_grad
    assert not _changed(teacher_before, teacher) and all(p.grad is None for p in teacher.parameters())
    assert set(logs) == {"loss/denoising", "grad_norm/fake_score", "skipped/fake_score", "loss/dmd", "loss/regression", "grad_norm/student", "skipped/student"}
    assert logs["skipped/student"] == logs["skipped/fake_score"] == 0.0


class CountingGenerator(torch.nn.Module):
    """A student generator that counts its forwards."""

    def __init__(self, generator):
        super().__init__()
        self.generator, self.calls = generator, 0

    def forward(self, z, cond=None):
        self.calls += 1
        return self.generator(z, cond)


def test_fake_step_trains_on_given_samples_without_calling_the_generator():
    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    fake, generator = trainable_copy(teacher), CountingGenerator(StudentGenerator(trainable_copy(teacher)))
    fake_before = _params(fake)
    fake_step(Networks(Accelerator(cpu=True), generator, Critic(fake, None)), torch.optim.AdamW(fake.parameters()),
              Batch(torch.randn(8, 2)), sample_dmd_sigma(8, **SIGMA), FAKE, SETTINGS, x=torch.randn(8, 2))
    assert generator.calls == 0 and _changed(fake_before, fake)


def test_student_copy_reproduces_teacher_before_training():
    teacher = MLPDenoiser(dim=3, hidden_dim=16, num_layers=2, emb_dim=8, sigma_data=0.7).eval()
    z = torch.randn(5, 3)
    with torch.no_grad():
        expected = teacher(teacher.sigma_max * z, teacher.sigma_max)
        torch.testing.assert_close(StudentGenerator(trainable_copy(teacher))(z), expected)  # another code path: float32 tolerance


def test_dmd_sigma_stays_in_the_configured_ramp():
    sigma = sample_dmd_sigma(10_000, **SIGMA)
    assert sigma.min() > 0.002 and sigma.max() < 80.0
    assert 1.0 < float(sigma.median()) < 5.0  # the middle of the Karras ramp is ~2.5


def test_lognormal_sigma_is_edms_training_draw_clamped_to_the_range():
    """SiD's fake-score draw (EDM's P_mean -1.2, P_std 1.2): ln sigma's mean and spread, inside [min, max]."""
    sigma = sample_dmd_sigma(20_000, **SIGMA, distribution="lognormal", p_mean=-1.2, p_std=1.2,
                             generator=torch.Generator().manual_seed(0))
    assert abs(float(sigma.log().mean()) + 1.2) < 0.05 and abs(float(sigma.log().std()) - 1.2) < 0.05
    narrow = sample_dmd_sigma(1000, **(SIGMA | {"min": 0.1, "max": 0.5}), distribution="lognormal")
    assert narrow.min() >= 0.1 and narrow.max() <= 0.5 and (narrow == 0.1).any() and (narrow == 0.5).any()
    per_sample_max = torch.tensor([80.0, 1.5] * 500)  # a k-step student's step sigmas (loss.sigma_up_to_student_step)
    capped = sample_dmd_sigma(1000, **(SIGMA | {"max": per_sample_max}), distribution="lognormal", p_mean=1.0)
    assert (capped <= per_sample_max).all() and (capped[1::2] == 1.5).any() and capped[0::2].max() > 1.5


def test_step_logs_stay_on_the_device_until_they_are_written():
    """No per-step reads of logged scalars (each is a host-device sync on a GPU); `scalars` reads them at log time."""
    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    logs = fake_step(Networks(Accelerator(cpu=True), StudentGenerator(student), Critic(fake, None)),
                     torch.optim.AdamW(fake.parameters()), Batch(torch.randn(8, 2)), sample_dmd_sigma(8, **SIGMA), FAKE, SETTINGS)
    for name in ("loss/denoising", "grad_norm/fake_score"):
        assert isinstance(logs[name], torch.Tensor) and logs[name].ndim == 0 and not logs[name].requires_grad
    floats = scalars(logs)
    assert all(type(v) is float for v in floats.values()) and floats["loss/denoising"] == logs["loss/denoising"].item()


def test_any_process_reads_a_device_flag_or_a_python_one():
    accelerator = Accelerator(cpu=True)
    assert any_process(accelerator, True) and not any_process(accelerator, False)
    assert any_process(accelerator, torch.tensor(True)) and not any_process(accelerator, torch.tensor([False]))


def test_gan_mask_limits_both_gan_losses_to_the_picked_samples(monkeypatch):
    """loss.gan_last_step_only: the classifier sees the picked student samples (and the whole real batch); the
    student's GAN loss is on the picked samples only; an empty pick leaves finite losses and no empty forward (a diffusers
    UNet's attention refuses one)."""
    from distill.gan import Critic, build_head

    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    critic = Critic(fake, build_head(fake))
    sizes, logits = [], Critic.logits
    monkeypatch.setattr(Critic, "logits", lambda self, x, *a: sizes.append(len(x)) or logits(self, x, *a))
    accelerator, generator = Accelerator(cpu=True), StudentGenerator(student)
    for mask in (torch.arange(8) < 3, torch.zeros(8, dtype=torch.bool)):
        sizes.clear()
        nets = Networks(accelerator, generator, critic, real=teacher, critic=critic)
        logs = fake_step(nets, torch.optim.AdamW(critic.parameters()),
                         Batch(torch.randn(8, 2), gan_mask=mask, gan_sigma=sample_dmd_sigma(16, **SIGMA)),
                         sample_dmd_sigma(8, **SIGMA), FAKE_GAN, SETTINGS, (torch.randn(8, 2),))
        student_logs, _ = student_step(
            nets, torch.optim.AdamW(student.parameters()), Batch(torch.randn(8, 2), gan_mask=mask, gan_sigma=sample_dmd_sigma(8, **SIGMA)),
            draws(generator), None, {"dmd": DMD(1.0), "gan_generator": GanGenerator(0.1)}, grad_clip=1.0,
        )
        picked = int(mask.sum())
        assert sizes == [picked + 8] + ([picked] if picked else [])  # the classifier's batch, then the student's GAN loss (none when empty)
        assert torch.isfinite(logs["loss/gan_discriminator"]) and torch.isfinite(student_logs["loss/gan_generator"])
        assert logs["skipped/fake_score"] == student_logs["skipped/student"] == 0.0


def test_gan_without_dmd_still_trains_the_student_on_its_own_samples():
    """No DMD term with the GAN on (a "GAN + regression" ablation): the GAN generator loss sees the whole student
    batch and moves the student (it used to see an empty batch, so its loss was always 0)."""
    from distill.gan import build_head

    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    critic = Critic(fake, build_head(fake))
    sizes, logits = [], Critic.logits
    generator, student_before = StudentGenerator(student), _params(student)
    z = torch.randn(8, 2)
    critic.logits = lambda x, *a: sizes.append(len(x)) or logits(critic, x, *a)
    logs, x = student_step(
        Networks(Accelerator(cpu=True), generator, critic, real=teacher, critic=critic),
        torch.optim.AdamW(student.parameters(), lr=1e-2), Batch(z, gan_sigma=sample_dmd_sigma(8, **SIGMA)),
        draws(generator), (torch.randn(4, 2), torch.randn(4, 2)), {"regression": Regression(0.25), "gan_generator": GanGenerator(1.0)},
    )
    assert sizes == [8] and len(x) == 8 and "loss/dmd" not in logs
    assert float(logs["loss/gan_generator"]) > 0.1  # softplus of finite logits: about log 2 at the start, never 0
    assert _changed(student_before, student)
