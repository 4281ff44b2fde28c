"""The full-size recipes (SD v1.5 DMD2 and DMD, the GAN stage) compose and pass validation on tiny random components
of the same structure; the stage-2 GAN run starts from a stage-1 checkpoint. SDXL's: tests/test_sdxl.py."""
import json

import pytest
from conftest import compose_config

from distill.config import validate, loss_terms
from distill.loop import run
from distill.tasks import LatentTask
from teachers.errors import ConfigError


def recipe(name, teacher, tmp_path, prompts, *extra):
    return compose_config("train", [f"experiment={name}", f"teacher.path={teacher}", f"data.prompts.path={prompts}",
                                    "data.path=unused", "teacher.dtype=float32", "train.mixed_precision=no",
                                    f"run_dir={tmp_path}", *extra])


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a handwritten seven\nthe digit 3\nnumber five, thick strokes\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["sd15_dmd2", "sd15_dmd"])
def test_sd15_recipes_validate_with_their_papers_settings(name, tiny_sd_folder, tmp_path, prompt_file):
    cfg = recipe(name, tiny_sd_folder, tmp_path, prompt_file)
    assert isinstance(validate(cfg), LatentTask)
    assert cfg.optim.student_lr == 1e-5 and cfg.train.grad_clip == 10 and cfg.optim.weight_decay == 0.01
    assert cfg.loss.guidance_scale == (1.75 if name == "sd15_dmd2" else 3.0)
    assert cfg.train.num_fake_steps_per_student_step == (10 if name == "sd15_dmd2" else 1)
    assert ("regression" in loss_terms(cfg.loss)[0]) == (name == "sd15_dmd")


def test_the_gan_stage_needs_a_stage_one_checkpoint(tiny_sd_folder, tmp_path, prompt_file):
    cfg = recipe("sd15_dmd2_gan", tiny_sd_folder, tmp_path, prompt_file, f"train.init_from={tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="train.init_from=.*cannot be loaded"):
        validate(cfg)


@pytest.mark.slow  # CI time (issue 34 added flow-teacher tests); make test-slow runs it
def test_gan_stage_starts_from_the_dmd_stage(tiny_sd_folder, tmp_path, prompt_file):
    """Stage 1 (mnist_sd, no GAN) for two steps, then a GAN stage from its checkpoint: fresh counters and optimizers,
    the stage-1 student's EMA weights as its start."""
    tiny = ["debug=cpu_tiny_sd", f"eval.cache_dir={tmp_path / 'cache'}", "eval.second_classifier=null", "eval.num_samples=32",
            "eval.quality_figures=false", "eval.cross_check=false", f"teacher.path={tiny_sd_folder}"]
    stage1 = tmp_path / "stage1"
    run(compose_config("train", ["experiment=mnist_sd", "loss.student.regression=null", f"run_dir={stage1}", *tiny]))
    stage2 = tmp_path / "stage2"
    run(compose_config("train", ["experiment=mnist_sd_dmd2", f"train.init_from={stage1 / 'checkpoints' / 'step-2'}",
                                 f"run_dir={stage2}", *tiny]))
    state = json.loads((stage2 / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["counters"]["step"] == 2 and (stage2 / "student" / "unet").is_dir()
