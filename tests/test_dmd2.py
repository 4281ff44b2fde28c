"""DMD2: the two time-scale rule, backward simulation, the GAN head and losses, multi-step students, bad input."""
import argparse
import json
import math

import pytest
from hydra.errors import ConfigCompositionException
import torch
from conftest import compose_config, tiny_unet_denoiser
from diffusers import DDPMScheduler, UNet2DModel

from distill.checkpoint import load_checkpoint
from distill.config import validate
from distill.gan import Critic, bottleneck_features, build_head, discriminator_loss, find_bottleneck, frozen, generator_loss
from distill.generator import StudentGenerator, trainable_copy
from distill.loop import run
from eval.bench import benchmark, parse_sampler
from eval.harness import student_sample_fn
from eval.run import student_sigmas
from teachers.errors import ConfigError
from teachers.base import Teacher
from teachers.mlp import MLPDenoiser
from teachers.unet import UNetDenoiser
import teachers

TOY = ["experiment=toy_gmm", "debug=cpu_tiny", "train.plot_every=1000"]
FOUR_SIGMAS = "student.sigmas=[80.0,5.0,1.5,0.5]"


def test_two_time_scale_rule_counts_its_updates_exactly(tmp_path):
    run(compose_config("train", [*TOY, "train.max_steps=3", "train.num_fake_steps_per_student_step=4", f"run_dir={tmp_path}"]))
    tensors, state = load_checkpoint(tmp_path / "checkpoints" / "step-3")
    counters = state["counters"] | {"skipped": {}, "train_seconds": 0.0}  # the wall clock is not counted here
    assert counters == {"step": 3, "student_updates": 3, "fake_updates": 12, "skipped": {}, "train_seconds": 0.0}
    # Adam's own step count per parameter: 4 fake-score updates for every student update.
    assert {float(v) for k, v in tensors["fake_optimizer"].items() if k.endswith(".step")} == {12.0}
    assert {float(v) for k, v in tensors["student_optimizer"].items() if k.endswith(".step")} == {3.0}


@pytest.mark.parametrize("gan", [[], ["+loss.student.gan_generator={_target_:distill.terms.GanGenerator,weight:0.1}", "+loss.fake.gan_discriminator={_target_:distill.terms.GanDiscriminator,weight:0.01}"]])
def test_reused_student_samples_save_one_generator_forward_per_update_after_the_first(tmp_path, monkeypatch, gan):
    """train.reuse_student_samples: the first fake update of steps 2.. trains on the last student update's samples."""
    calls = []
    forward = StudentGenerator.forward
    monkeypatch.setattr(StudentGenerator, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    overrides = [*TOY, *gan]
    counts = {}
    for reuse in (False, True):
        calls.clear()
        run(compose_config("train", [*overrides, "train.max_steps=3", "train.num_fake_steps_per_student_step=2",
                                     "train.plot_every=1000", f"train.reuse_student_samples={reuse}", f"run_dir={tmp_path / str(reuse)}"]))
        counts[reuse] = len(calls)
        assert load_checkpoint(tmp_path / str(reuse) / "checkpoints" / "step-3")[1]["counters"]["fake_updates"] == 6
    assert counts[False] - counts[True] == 2


class _Recorder(Teacher, torch.nn.Module):
    """Wraps a denoiser and records, per call, whether autograd was on and the sigmas it got."""

    def __init__(self, denoiser):
        torch.nn.Module.__init__(self)
        self.denoiser, self.calls = denoiser, []
        self.sigma_max = denoiser.sigma_max

    def forward(self, x, sigma, cond=None):
        out = self.denoiser(x, sigma, cond)
        self.calls.append((torch.is_grad_enabled(), out.requires_grad, torch.as_tensor(sigma).flatten().clone()))
        return out


class _NoFeatures(Teacher, torch.nn.Linear):
    """A network behind the teacher protocol that names no feature layers."""


def test_backward_simulation_steps_carry_no_gradient():
    torch.manual_seed(0)
    student = _Recorder(trainable_copy(MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8)))
    generator = StudentGenerator(student, [80.0, 5.0, 1.5, 0.5])
    z = torch.randn(256, 2)
    x = generator(z)
    *simulated, trained = student.calls
    assert len(simulated) >= 1 and all(not grad_on and not req for grad_on, req, _ in simulated)
    assert trained[0] and trained[1] and x.requires_grad
    assert set(trained[2].tolist()) == {80.0, 5.0, 1.5, 0.5}  # every step is trained, each sample at one of them
    x.sum().backward()
    assert all(p.grad is not None for p in student.parameters())


def test_backward_simulation_inputs_are_the_students_own_earlier_steps():
    student = trainable_copy(MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8))
    generator = StudentGenerator(student, [80.0, 5.0, 1.5])
    z, step = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(3)
    inputs, sigma = generator.backward_simulation(z, step)
    torch.manual_seed(3)
    with torch.no_grad():
        x1 = student(80 * z, torch.full((6,), 80.0)) + 5.0 * torch.randn(6, 2)
        x2 = student(x1, torch.full((6,), 5.0)) + 1.5 * torch.randn(6, 2)
    torch.testing.assert_close(inputs, torch.stack([80 * z[0], x1[1], x2[2], 80 * z[3], x1[4], x2[5]]))
    assert sigma.tolist() == [80.0, 5.0, 1.5, 80.0, 5.0, 1.5] and not inputs.requires_grad


def test_backward_simulation_runs_each_step_only_on_the_samples_past_it():
    student = _Recorder(trainable_copy(MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8)))
    generator = StudentGenerator(student, [80.0, 5.0, 1.5, 0.5])
    step = torch.tensor([0, 3, 1, 0, 2, 3, 0])
    generator.backward_simulation(torch.randn(7, 2), step)
    # one call per step j = 1..3 on the samples whose step is >= j: sum(step) evaluations, not 3 x 7
    assert [len(sigma) for *_, sigma in student.calls] == [4, 3, 2] == [int((step >= j).sum()) for j in (1, 2, 3)]
    assert [sigma.unique().tolist() for *_, sigma in student.calls] == [[80.0], [5.0], [1.5]]


def test_a_given_step_is_the_step_that_trains():
    student = _Recorder(trainable_copy(MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8)))
    generator = StudentGenerator(student, [80.0, 5.0, 1.5, 0.5])
    step = torch.tensor([3, 0, 2, 2, 1])
    generator(torch.randn(5, 2), None, step)
    assert student.calls[-1][1] and student.calls[-1][2].tolist() == [0.5, 80.0, 1.5, 1.5, 5.0]
    assert StudentGenerator(student).draw_steps(4) is None  # a one-step student has no steps to draw


@pytest.mark.parametrize("up_to_step", [False, True])
def test_dmd_sigma_up_to_each_samples_student_step(up_to_step):
    """loss.sigma_up_to_student_step: a sample made at step i draws its DMD sigma in [sigma.min, min(s_i, sigma.max)]."""

    from distill.steps import Draws, StepSampling

    sigma = {"min": 0.1, "max": 80.0, "rho": 7.0, "t_min": 0.0, "t_max": 1.0}
    student = StudentGenerator(MLPDenoiser(dim=2), [157.4, 17.25, 3.424, 0.9529])
    sampling = StepSampling(tuple(student.sigmas), sigma_up_to_student_step=up_to_step)
    draws = Draws(torch.device("cpu"), (2,), student, sampling, {"sigma": sigma})
    step = torch.arange(4).repeat_interleave(2000)
    drawn = draws.sigma(len(step), step)
    top = [float(drawn[step == i].max()) for i in range(4)]
    assert float(drawn.min()) >= 0.1 - 1e-6
    if up_to_step:
        assert top[0] <= 80.0 + 1e-4 and [t <= s + 1e-4 for t, s in zip(top[1:], (17.25, 3.424, 0.9529))] == [True] * 3
        assert top[3] > 0.9  # the range reaches up to the step's own sigma
    else:
        assert min(top) > 60  # every step over the whole range
    assert draws.sigma(8).shape == (8,)  # a one-step student: no steps, the whole range


def test_one_step_generator_is_the_student_at_sigma_max():
    student = MLPDenoiser(dim=2, hidden_dim=16, num_layers=1, emb_dim=8)
    z = torch.randn(5, 2)
    expected = student(student.sigma_max * z, torch.full((5,), student.sigma_max))
    # the generator and the sampler reach the network through other code than this direct call: float32 tolerance
    torch.testing.assert_close(StudentGenerator(student)(z), expected)
    torch.testing.assert_close(StudentGenerator(student).sample(z), expected)


def _unet_without_mid_block():
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        mid_block_type=None,
    )
    return UNetDenoiser(unet, DDPMScheduler(num_train_timesteps=1000))


SUPPORTED = {
    "toy mlp": lambda: MLPDenoiser(dim=2, hidden_dim=32, num_layers=2, emb_dim=8),
    "unet uncond 8x8": lambda: tiny_unet_denoiser(),
    "unet cond 8x8": lambda: tiny_unet_denoiser(num_classes=10),
    "unet rgb 16x16": lambda: tiny_unet_denoiser(size=16, channels=3),
    "zoo mnist_uncond": lambda: teachers.load("zoo:mnist_uncond"),
    "zoo mnist_cond": lambda: teachers.load("zoo:mnist_cond"),
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_gan_head_has_the_right_shapes_for_every_supported_teacher(name):
    fake = trainable_copy(SUPPORTED[name]())
    critic = Critic(fake, build_head(fake))
    x = torch.randn(3, *fake.shape)
    cond = torch.tensor([0, 1, 2]) if fake.num_classes else None
    x0, logits = critic(x, torch.tensor([0.5, 2.0, 10.0]), cond, classify=(x, torch.tensor([0.5, 2.0, 10.0]), cond))
    assert x0.shape == x.shape and logits.shape == (3,)
    torch.testing.assert_close(x0, fake(x, torch.tensor([0.5, 2.0, 10.0]), cond))  # the head does not change D_fake
    logits.sum().backward()
    assert all(p.grad is not None for p in critic.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fake.parameters())  # it trains the backbone too


def test_classifier_forward_stops_at_the_bottleneck_with_the_full_forwards_features():
    fake = trainable_copy(tiny_unet_denoiser())
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0])
    seen, decoder_calls = [], []
    fake.bottleneck.register_forward_hook(lambda _m, _i, out: seen.append(out))
    fake(x, sigma)  # the full forward: its bottleneck output is seen[0]
    fake.unet.up_blocks[0].register_forward_hook(lambda *_: decoder_calls.append(1))
    features = bottleneck_features(fake, x, sigma)
    torch.testing.assert_close(features, seen[0], rtol=0, atol=0)  # a replay: the same layers on the same batch up to the bottleneck
    assert decoder_calls == []  # the decoder never ran
    features.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fake.parameters())
    fake(x, sigma)
    assert decoder_calls == [1]  # and the hook that stopped it is gone


@pytest.mark.parametrize("denoiser", [_unet_without_mid_block, lambda: _NoFeatures(2, 2)])
def test_gan_head_on_a_teacher_without_features_is_refused(denoiser):
    with pytest.raises(ConfigError, match="need the fake score's bottleneck features.*leave the GAN terms out"):
        find_bottleneck(denoiser())


def test_gan_losses_known_answers():
    zero = torch.zeros(4)
    torch.testing.assert_close(discriminator_loss(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(generator_loss(zero), torch.full((4,), math.log(2)))
    big = torch.full((2,), 30.0)
    assert discriminator_loss(big, -big) < 1e-12 and generator_loss(big).max() < 1e-12  # a perfect classifier
    assert discriminator_loss(-big, big) > 59  # a wrong one: about 2 x 30
    # unequal batches (loss.gan_last_step_only): each side is its own mean; no fake samples add 0, not NaN
    torch.testing.assert_close(discriminator_loss(zero, zero[:1]), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(discriminator_loss(zero, zero[:0]), torch.tensor(math.log(2)))


def test_frozen_critic_passes_gradient_to_the_images_only():
    fake = trainable_copy(tiny_unet_denoiser())
    critic = Critic(fake, build_head(fake))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    with frozen(critic):
        logits = critic.logits(x, torch.tensor([1.0, 1.0]))
    generator_loss(logits).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters()) and all(p.requires_grad for p in critic.parameters())


def test_multistep_student_sampler_is_reproducible_and_counts_its_nfe():
    student = tiny_unet_denoiser()
    fn = student_sample_fn(student, [80.0, 5.0, 1.5, 0.5], seed=7)
    z = torch.randn(4, 1, 8, 8)
    again = student_sample_fn(student, [80.0, 5.0, 1.5, 0.5], seed=7)
    first = fn.fn(z)
    assert fn.nfe == 4
    torch.testing.assert_close(first, again.fn(z), rtol=0, atol=0)  # a replay: same seed, same batches, same code: same samples
    fn.reseed(4)  # the batch of seeds 4-7: its own re-noising
    assert not torch.equal(fn.fn(z), first)
    fn.reseed(0)
    torch.testing.assert_close(fn.fn(z), first, rtol=0, atol=0)  # whoever samples the batch of seeds 0-3


def test_bench_times_a_multistep_student_on_its_own_steps():
    teacher, student = tiny_unet_denoiser(), tiny_unet_denoiser()
    figures = benchmark(teacher, student, [{"name": "heun", "num_steps": 2}], batch_size=8, repeats=1,
                        device=torch.device("cpu"), student_sigmas=[80.0, 5.0, 1.5, 0.5])
    assert set(figures) == {"teacher_heun_nfe3", "student_nfe4"}
    student_row, teacher_row = figures["student_nfe4"], figures["teacher_heun_nfe3"]
    assert student_row["nfe"] == 4 and student_row["student_speedup"] == student_row["speedup_over_nfe"] == 1.0
    # per network evaluation: 4 student NFE against 3 teacher NFE
    assert teacher_row["speedup_over_nfe"] == pytest.approx(teacher_row["student_speedup"] * 4 / 3)
    assert student_row["device_name"].startswith("cpu (")  # what the seconds were measured on


@pytest.mark.parametrize("text", ["heun", "heun:x", "heun:0", "rk4:8"])
def test_bench_refuses_a_malformed_sampler_with_a_usage_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="name:num_steps"):
        parse_sampler(text)
    assert parse_sampler("euler:2") == {"name": "euler", "num_steps": 2}


def test_dmd2_image_run_with_a_four_step_student(tmp_path):
    cache = tmp_path / "cache"
    overrides = ["experiment=mnist_dmd2_4step", "data=digits", "debug=cpu_tiny_image", "train.num_fake_steps_per_student_step=2",
                 FOUR_SIGMAS, f"run_dir={tmp_path / 'run'}", f"eval.cache_dir={cache}"]
    metrics = run(compose_config("train", overrides))
    assert metrics.keys() == {"teacher_heun_nfe3", "student_nfe4"} and metrics["student_nfe4"]["nfe"] == 4
    assert json.loads((tmp_path / "run" / "student" / "student.json").read_text())["sigmas"] == [80.0, 5.0, 1.5, 0.5]
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {"loss/gan_generator", "loss/gan_discriminator", "loss/dmd"} <= log[-1].keys() and "loss/regression" not in log[-1]
    assert "gan_head" in load_checkpoint(tmp_path / "run" / "checkpoints" / "step-2")[0]
    # python -m eval finds the sigma list beside the exported student.
    eval_cfg = compose_config("eval", ["experiment=mnist", f"student_path={tmp_path / 'run' / 'student'}"])
    assert student_sigmas(eval_cfg) == [80.0, 5.0, 1.5, 0.5]


def record_dmd_sigmas(monkeypatch) -> list:
    """(step, sigma) of every DMD noise draw of the runs that follow: the steps that reach the losses."""
    from distill.steps import Draws

    seen, sample = [], Draws.sigma

    def record(self, n, step=None, key="sigma"):
        sigma = sample(self, n, step, key)
        if key != "gan_sigma":  # the GAN's noise is drawn for every sample alike
            seen.append((step, sigma))
        return sigma

    monkeypatch.setattr(Draws, "sigma", record)
    return seen


def test_four_step_run_with_dmd_sigma_up_to_each_step(tmp_path, monkeypatch):
    """The steps drawn for a batch reach the generator, and its samples' DMD sigmas stay at or below their steps'."""
    seen = record_dmd_sigmas(monkeypatch)
    run(compose_config("train", [*TOY, "student=four_step", "loss.sigma_up_to_student_step=true", "train.max_steps=2",
                                 "train.reuse_student_samples=true", f"run_dir={tmp_path}"]))
    caps = torch.tensor([80.0, 5.0, 1.5, 0.5])
    assert seen and all(step is not None and bool((sigma <= caps[step] + 1e-4).all()) for step, sigma in seen)


def test_last_step_only_trains_every_sample_at_the_last_step(tmp_path, monkeypatch):
    """loss.last_step_only: the fake score's and the student's samples all come from step k-1 (after backward simulation)."""
    seen = record_dmd_sigmas(monkeypatch)
    run(compose_config("train", [*TOY, "student=four_step", "loss.last_step_only=true", "train.max_steps=2", f"run_dir={tmp_path}"]))
    assert seen and all(step is not None and step.tolist() == [3] * len(step) for step, _ in seen)


def test_a_one_step_checkpoint_resumes_as_a_four_step_student(tmp_path):
    """Warm start: a 1-step run's checkpoint, resumed with student=four_step, trains the same weights on 4 steps."""
    run(compose_config("train", [*TOY, "train.max_steps=2", f"run_dir={tmp_path / 'one'}"]))
    start = tmp_path / "one" / "checkpoints" / "step-2"
    four = tmp_path / "four"
    run(compose_config("train", [*TOY, "student=four_step", "train.max_steps=3", f"train.resume_from={start}", f"run_dir={four}"]))
    before, after = load_checkpoint(start)[0]["student"], load_checkpoint(four / "checkpoints" / "step-3")[0]["student"]
    logged = [json.loads(line)["step"] for line in (four / "train_log.jsonl").read_text().splitlines()]
    assert logged == [3]  # it went on from step 2, not from the teacher's weights
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((four / "student" / "student.json").read_text())["sigmas"] == [80.0, 5.0, 1.5, 0.5]


def test_toy_gan_run_resumes_with_its_head(tmp_path):
    overrides = [*TOY, *["+loss.student.gan_generator={_target_:distill.terms.GanGenerator,weight:0.1}", "+loss.fake.gan_discriminator={_target_:distill.terms.GanDiscriminator,weight:0.01}"], f"run_dir={tmp_path}"]
    run(compose_config("train", [*overrides, "train.max_steps=2"]))
    head_at_2 = load_checkpoint(tmp_path / "checkpoints" / "step-2")[0]["gan_head"]
    run(compose_config("train", [*overrides, "train.max_steps=3"]))
    head_at_3 = load_checkpoint(tmp_path / "checkpoints" / "step-3")[0]["gan_head"]
    assert head_at_2.keys() == head_at_3.keys() and any(not torch.equal(head_at_2[k], head_at_3[k]) for k in head_at_2)


@pytest.mark.parametrize(("overrides", "message"), [
    (["student.num_steps=4"], r"student.num_steps=4 needs a sigma list: set student.sigmas"),
    (["student.num_steps=2", FOUR_SIGMAS], r"has 4 entries but student.num_steps=2"),
    (["student.num_steps=2", "student.sigmas=[1.0,5.0]"], r"strictly decreasing"),
    (["student.num_steps=0"], r"student.num_steps=0; it must be an integer >= 1"),
    (["+loss.student.gan_generator={_target_:distill.terms.GanGenerator,weight:1.0}"], r"the GAN needs a generator term"),
    (["loss=dmd2", "loss.fake.gan_discriminator.weight=-1"], r"loss.fake.gan_discriminator.weight=-1(\.0)?; it must be a number >= 0"),
    # not a boolean (OmegaConf's booleans: true/false, yes/no, on/off, 1/0): refused by the schema while composing
    (["loss.sigma_up_to_student_step=maybe"], r"loss.sigma_up_to_student_step=maybe"),
    (["loss.gan_last_step_only=never"], r"loss.gan_last_step_only=never"),
    (["loss.last_step_only=sometimes"], r"loss.last_step_only=sometimes"),
    (["loss.sigma_up_to_student_step=true", "student.num_steps=2", "student.sigmas=[80.0,0.003]", "loss.sigma.min=0.005"],
     r"needs its sigma > loss.sigma.min"),
])
def test_bad_dmd2_settings_are_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ConfigCompositionException), match=message):
        validate(compose_config("train", [*TOY, *overrides, f"run_dir={tmp_path}"]))
    assert not any(tmp_path.iterdir())
