"""loss.step_aware_fake_score: D_fake(x, sigma | step) for k-step students, from the unit to a warm-started run."""
import json

import pytest
from hydra.errors import ConfigCompositionException
import torch
from conftest import compose_config, tiny_unet_denoiser

from distill.checkpoint import load_checkpoint
from distill.config import validate
from distill.fake_score import build_step_embedding, find_time_embedding
from distill.gan import Critic, build_head
from distill.generator import trainable_copy
from distill.loop import run
from distill.steps import steps_for_real
from teachers.errors import ConfigError
from teachers.base import Teacher
from teachers.gmm import GMMDenoiser, mixture_from_lists
from teachers.mlp import MLPDenoiser

TOY = ["experiment=toy_gmm", "debug=cpu_tiny", "train.plot_every=1000"]
GAN = ["+loss.student.gan_generator={_target_:distill.terms.GanGenerator,weight:0.1}", "+loss.fake.gan_discriminator={_target_:distill.terms.GanDiscriminator,weight:0.01}"]
TEACHERS = {
    "mlp": lambda: MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8),
    "unet cond 8x8": lambda: tiny_unet_denoiser(num_classes=10),
    "unet rgb 16x16": lambda: tiny_unet_denoiser(size=16, channels=3),
}


@pytest.mark.parametrize("name", TEACHERS)
def test_step_embedding_starts_as_the_teacher_copy_then_tells_the_steps_apart(name):
    fake = trainable_copy(TEACHERS[name]())
    critic = Critic(fake, None, build_step_embedding(fake, 4))
    x, sigma = torch.randn(3, *fake.shape), torch.tensor([0.5, 2.0, 10.0])
    cond = torch.tensor([0, 1, 2]) if fake.num_classes else None
    step = torch.tensor([0, 3, 3])
    with torch.no_grad():
        plain = fake(x, sigma, cond)
        torch.testing.assert_close(critic(x, sigma, cond, step=step), plain)  # zero at the start (through a hook: float32 tolerance)
        critic.steps.table.weight.normal_()
        x0_by_step = [critic(x, sigma, cond, step=torch.full((3,), i)) for i in range(4)]
        torch.testing.assert_close(critic(x, sigma, cond), plain, rtol=0, atol=0)  # no step: the hook is gone (a replay of the plain forward)
    assert all(not torch.allclose(x0_by_step[0], other) for other in x0_by_step[1:])
    critic(x, sigma, cond, step=step).square().sum().backward()
    grad = critic.steps.table.weight.grad
    assert grad[[0, 3]].abs().sum(dim=1).gt(0).all() and grad[[1, 2]].abs().sum() == 0  # only the steps drawn train


def test_the_classifier_reads_the_step_too():
    fake = trainable_copy(TEACHERS["unet cond 8x8"]())
    critic = Critic(fake, build_head(fake), build_step_embedding(fake, 2))
    x, sigma, cond = torch.randn(2, *fake.shape), torch.tensor([0.5, 2.0]), torch.tensor([3, 4])
    with torch.no_grad():
        blind = critic.logits(x, sigma, cond)
        torch.testing.assert_close(critic.logits(x, sigma, cond, torch.tensor([1, 1])), blind)  # zero table (through a hook)
        critic.steps.table.weight.normal_()
        _, logits = critic(x, sigma, cond, step=torch.tensor([0, 0]), classify=(x, sigma, cond, torch.tensor([1, 1])))
        torch.testing.assert_close(logits, critic.logits(x, sigma, cond, torch.tensor([1, 1])), rtol=0, atol=0)  # a replay: forward(classify=) calls logits on the same batch
        assert not torch.allclose(logits, critic.logits(x, sigma, cond, torch.tensor([0, 0])))


def test_real_images_carry_the_classified_samples_steps():
    step = torch.tensor([0, 3, 1, 3])
    assert steps_for_real(step, step, 4).tolist() == [0, 3, 1, 3]
    assert steps_for_real(step[step == 3], step, 4).tolist() == [3, 3, 3, 3]  # loss.gan_last_step_only
    assert steps_for_real(step[:0], step, 3).tolist() == [0, 3, 1]  # no student sample classified


def test_a_teacher_without_a_time_embedding_is_refused():
    mixture = mixture_from_lists([[0.0, 0.0], [1.0, 1.0]], [0.1, 0.1], [0.5, 0.5])
    class NoFeatures(Teacher, torch.nn.Linear):
        """A network behind the teacher protocol that names no time embedding."""

    for denoiser in (GMMDenoiser(mixture), NoFeatures(2, 2)):
        with pytest.raises(ConfigError, match="step_aware_fake_score=true needs a time embedding.*set it to false"):
            find_time_embedding(denoiser)


def test_bad_value_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigCompositionException, match="loss.step_aware_fake_score=maybe"):  # the schema: a boolean
        validate(compose_config("train", [*TOY, "loss.step_aware_fake_score=maybe", f"run_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())


def test_a_one_step_run_warm_starts_a_step_aware_four_step_run_that_resumes(tmp_path):
    """The 1-step checkpoint has no step embedding: it starts at zero (with a warning; its optimizer group fresh, after
    the fake score's and the GAN head's) and trains; the 4-step checkpoint then resumes with it, and refuses a run
    without it."""
    run(compose_config("train", [*TOY, *GAN, "train.max_steps=2", f"run_dir={tmp_path / 'one'}"]))
    four = [*TOY, *GAN, "student=four_step", "loss.step_aware_fake_score=true", f"run_dir={tmp_path / 'four'}"]
    with pytest.warns(UserWarning, match="no step embedding"):
        run(compose_config("train", [*four, "train.max_steps=3", f"train.resume_from={tmp_path / 'one' / 'checkpoints' / 'step-2'}"]))
    at_3 = load_checkpoint(tmp_path / "four" / "checkpoints" / "step-3")[0]
    assert at_3["step_embedding"]["table.weight"].shape[0] == 4 and at_3["step_embedding"]["table.weight"].abs().sum() > 0
    run(compose_config("train", [*four, "train.max_steps=4"]))  # resumes step-3 by itself
    at_4 = load_checkpoint(tmp_path / "four" / "checkpoints" / "step-4")[0]
    assert not torch.equal(at_3["step_embedding"]["table.weight"], at_4["step_embedding"]["table.weight"])
    logged = [json.loads(line)["step"] for line in (tmp_path / "four" / "train_log.jsonl").read_text().splitlines()]
    assert logged == [3, 4]
    blind = [*TOY, *GAN, "student=four_step", "train.max_steps=5", f"run_dir={tmp_path / 'blind'}",
             f"train.resume_from={tmp_path / 'four' / 'checkpoints' / 'step-4'}"]
    with pytest.raises(ConfigError, match="it has a step-aware fake score, but this run has none"):
        run(compose_config("train", blind))
