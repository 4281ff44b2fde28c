"""Review findings of the teacher protocol issue, each a test that failed before its fix: sigma ranges checked (not
clamped), a warm-started run resumes its own newest checkpoint, DiT refuses zero-terminal-SNR schedules, the student's
GAN term runs under the run's autocast, the serve benchmark's requests for text students."""

import pytest
import torch
from accelerate import Accelerator
from conftest import compose_config, tiny_dit_denoiser, tiny_sd_denoiser

from distill.config import validate
from distill.gan import Critic, build_head
from distill.generator import StudentGenerator, trainable_copy
from distill.noise import sample_dmd_sigma
from distill.steps import Batch, Draws, Networks, StepSampling, student_step
from distill.terms import GanGenerator
from teachers.errors import ConfigError
from teachers.mlp import MLPDenoiser

TOY = ["experiment=toy_gmm", "debug=cpu_tiny"]


@pytest.mark.parametrize("overrides, message", [
    (["loss.gan_sigma.max=100"], r"loss.gan_sigma.max=100.0 is outside the teacher's sigma range \[0.002, 80\]"),
    (["loss.sigma.min=0.0001"], r"loss.sigma.min=0.0001 is outside the teacher's sigma range \[0.002, 80\]"),
    (["loss.fake_sigma.max=81.0"], r"loss.fake_sigma.max=81.0 is outside"),
    (["student.sigmas=[120.0]"], r"student.sigmas=\[120.0\]: 120.0 is outside the teacher's sigma range \[0.002, 80\]"),
])
def test_sigmas_outside_the_teachers_range_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config("train", [*TOY, "run_dir=x", *overrides]))


def test_a_null_bound_is_the_teachers_own_and_is_recorded(tiny_sd_folder):
    cfg = compose_config("train", ["experiment=mnist_sd_dmd2", "debug=cpu_tiny_sd", f"teacher.path={tiny_sd_folder}", "run_dir=x",
                                   "loss.sigma.min=null", "loss.gan_sigma.max=null"])
    validate(cfg)
    teacher = tiny_sd_denoiser()
    assert cfg.loss.sigma.min == pytest.approx(teacher.sigma_min) and cfg.loss.fake_sigma.min == pytest.approx(teacher.sigma_min)
    assert cfg.loss.gan_sigma.max == pytest.approx(teacher.sigma_max)
    with pytest.raises(ConfigError, match=r"loss.gan_sigma.max=80.0 is outside the teacher's sigma range \[0.0291675, 14.6146\]"):
        validate(compose_config("train", ["experiment=mnist_sd_dmd2", "debug=cpu_tiny_sd", f"teacher.path={tiny_sd_folder}",
                                          "run_dir=x", "loss.gan_sigma.max=80.0"]))


def test_the_sd_gan_stage_keeps_its_gan_noise_inside_sds_range(tiny_sd_folder):
    """sd15_dmd2_gan inherited the pixel recipe's gan_sigma {0.002, 80}: a quarter of its draws lay above SD's 14.6."""
    cfg = compose_config("train", ["experiment=sd15_dmd2_gan", "debug=cpu_tiny_sd", f"teacher.path={tiny_sd_folder}", "run_dir=x",
                                   "data=mnist_sd", "train.init_from=null", "train.mixed_precision=no", "teacher.dtype=float32"])
    validate(cfg)
    assert cfg.loss.gan_sigma.max == pytest.approx(tiny_sd_denoiser().sigma_max)


def test_a_warm_started_run_resumes_its_own_newest_checkpoint(tmp_path):
    """train.resume_from starts a run; re-run with the same command after it sealed checkpoints, it resumes the newest
    of its own (before: the old warm start again, losing the run's progress)."""
    from distill.loop import prepare, run

    run(compose_config("train", [*TOY, "train.max_steps=2", f"run_dir={tmp_path / 'a'}"]))
    warm = [*TOY, f"train.resume_from={tmp_path / 'a' / 'checkpoints' / 'step-2'}", "train.checkpoint_every=1", f"run_dir={tmp_path / 'b'}"]
    run(compose_config("train", [*warm, "train.max_steps=4"]))  # steps 3 and 4, sealed in b
    assert prepare(compose_config("train", [*warm, "train.max_steps=6"])).counters.step == 4


def test_a_dit_with_a_zero_terminal_snr_schedule_is_refused():
    from diffusers import DDPMScheduler

    from teachers.dit import DiTDenoiser

    dit = tiny_dit_denoiser()
    with pytest.raises(ConfigError, match="zero-terminal-SNR"):
        DiTDenoiser(dit.transformer, DDPMScheduler(rescale_betas_zero_snr=True), dit.vae)


def test_the_students_gan_term_runs_under_the_runs_autocast():
    """The student's GAN loss calls the unwrapped critic, which accelerate's prepared forward does not wrap: it must
    run inside accelerator.autocast() (bf16 under train.mixed_precision=bf16), as the fake score's side does."""
    import contextlib

    teacher = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8, sigma_data=1.0).eval().requires_grad_(False)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    critic = Critic(fake, build_head(fake))
    accelerator, inside, seen, logits = Accelerator(cpu=True), [], [], Critic.logits

    @contextlib.contextmanager
    def autocast(*args, **kwargs):
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    accelerator.autocast = autocast
    critic.logits = lambda *a: seen.append(bool(inside)) or logits(critic, *a)
    sigma = {"min": 0.002, "max": 80.0, "rho": 7.0, "t_min": 0.02, "t_max": 0.98}
    generator = StudentGenerator(student)
    draws = Draws(torch.device("cpu"), (2,), generator, StepSampling(tuple(generator.sigmas)), {"sigma": sigma})
    student_step(Networks(accelerator, generator, critic, real=teacher, critic=critic),
                 torch.optim.AdamW(student.parameters()), Batch(torch.randn(8, 2), gan_sigma=sample_dmd_sigma(8, **sigma)),
                 draws, None, {"gan_generator": GanGenerator(1.0)})
    assert seen == [True]


def test_the_serve_benchmark_asks_a_text_student_with_prompts():
    from distill.serve.model import PreviewModel
    from distill.serve.source import LoadedStudent

    model = PreviewModel(LoadedStudent(tiny_sd_denoiser(), [14.6], "test"))
    requests = [model.request_condition(seed) for seed in range(3)]
    assert requests == [{"prompt": ""}] * 3
    assert model.generate([0, 1, 2], model.labels_of(requests)).shape == (3, 32, 32, 1)
