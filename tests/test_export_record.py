"""What an exported student carries beside its weights (student.json), and how `python -m eval` reads it."""
import json

import pytest
import torch
from conftest import compose_config, tiny_unet_denoiser

from distill.export import export_student, student_record
from distill.loop import run
from eval.run import load_models, student_sigmas
from teachers.guidance import GuidedDenoiser
from teachers.io import save_pretrained_atomic

TOY = ["experiment=toy_gmm", "debug=cpu_tiny", "train.max_steps=1"]


def test_a_one_step_students_own_sigma_is_exported_and_read_back(tmp_path):
    """student.sigmas=[s] with one entry: `python -m eval` samples the student at s, not at the teacher's sigma_max."""
    run(compose_config("train", [*TOY, "student.sigmas=[20.0]", f"run_dir={tmp_path}"]))
    assert json.loads((tmp_path / "student" / "student.json").read_text())["sigmas"] == [20.0]
    eval_cfg = compose_config("eval", ["experiment=toy_gmm", f"student_path={tmp_path / 'student'}"])
    assert student_sigmas(eval_cfg) == [20.0]


def test_a_default_one_step_student_records_its_sigma_max(tmp_path):
    run(compose_config("train", [*TOY, f"run_dir={tmp_path}"]))
    record = json.loads((tmp_path / "student" / "student.json").read_text())
    assert record["sigmas"] == [pytest.approx(80.0)] and record["guidance_scale"] == 1.0


@pytest.mark.parametrize("override, expected", [(None, 2.5), (1.0, 1.0), (4.0, 4.0)])
def test_standalone_evaluation_applies_the_students_guidance(tmp_path, override, expected):
    """A CFG-distilled student is judged against the guided teacher it matched, unless guidance_scale says otherwise."""
    teacher = tiny_unet_denoiser(num_classes=3)
    teacher_dir = save_pretrained_atomic(teacher, tmp_path / "teacher")
    export_student(teacher, None, tmp_path / "student", student_record([80.0], 2.5, str(teacher_dir)))
    overrides = ["experiment=mnist", "data=digits", f"teacher.path={teacher_dir}", f"student_path={tmp_path / 'student'}"]
    if override is not None:
        overrides.append(f"guidance_scale={override}")
    real, student = load_models(compose_config("eval", overrides))
    assert student is not None
    if expected == 1.0:
        assert not isinstance(real, GuidedDenoiser)
    else:
        assert isinstance(real, GuidedDenoiser) and real.scale == expected
        x, sigma, cond = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 5.0]), torch.tensor([0, 2])
        with torch.no_grad():
            c, u = real.denoiser(x, sigma, cond), real.denoiser(x, sigma, torch.full_like(cond, 3))
            torch.testing.assert_close(real(x, sigma, cond), u + expected * (c - u))


def test_regression_pairs_come_from_the_real_score_the_run_uses(tmp_path):
    """teacher=gmm_exact: the ODE pairs are the exact denoiser's sampler output (the score DMD matches and evaluation
    judges), not the MLP teacher's."""
    from distill.pairs import load_pairs
    from eval.samplers import get_sampler, karras_sigmas
    from teachers.gmm import GMMDenoiser, mixture_from_lists

    cfg = compose_config("train", [*TOY, "teacher=gmm_exact", f"run_dir={tmp_path}"])
    run(cfg)
    z_ref, y_ref = load_pairs(tmp_path / "pairs", cfg.loss.pairs.num_pairs)
    exact = GMMDenoiser(mixture_from_lists(cfg.data.means, cfg.data.stds, cfg.data.weights))
    sigmas = karras_sigmas(cfg.loss.pairs.num_steps, exact.sigma_min, exact.sigma_max)
    expected = get_sampler(cfg.loss.pairs.sampler)(exact, z_ref, sigmas, None)
    torch.testing.assert_close(y_ref, expected, rtol=1e-4, atol=1e-4)
