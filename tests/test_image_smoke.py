"""A tiny-UNet distillation on sklearn digits writes every output; bad image input stops before any work."""
import json

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_unet_denoiser
from diffusers import DDPMPipeline
from PIL import Image

from distill.loop import run
from teachers.errors import ConfigError
from teachers.io import save_pretrained_atomic

IMAGE_KEYS = {"nfe", "num_samples", "seconds_per_sample", "fid", "fid_vs_teacher", "fid_torchmetrics", "feature_extractor", "seed",
              "class_counts", "mean_top_class_probability", "class_tv", "class_tv_vs_teacher",
              "fid_ci95", "kid", "kid_std", "precision", "recall", "density", "coverage", "second_extractor"}


def tiny_overrides(run_dir, cache_dir, *extra):
    return ["experiment=mnist", "data=digits", "debug=cpu_tiny_image", f"run_dir={run_dir}", f"eval.cache_dir={cache_dir}", *extra]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run_dir, cache = tmp_path_factory.mktemp("image_smoke"), tmp_path_factory.mktemp("cache")
    return run_dir, cache, run(compose_config("train", tiny_overrides(run_dir, cache)))


def test_tiny_unet_run_writes_every_output(image_run):
    run_dir, cache, metrics = image_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk.keys() == metrics.keys() == {"teacher_heun_nfe3", "student_nfe1"}
    for label, entry in on_disk.items():
        assert IMAGE_KEYS <= entry.keys(), label
        assert np.isfinite(entry["fid"]) and entry["fid"] == pytest.approx(entry["fid_torchmetrics"], rel=1e-3)
        pngs = sorted((run_dir / "samples" / label).glob("*.png"))
        assert len(pngs) == 64 and Image.open(pngs[0]).size == (8, 8)
    assert on_disk["teacher_heun_nfe3"]["fid_vs_teacher"] == 0.0 < on_disk["student_nfe1"]["fid_vs_teacher"]
    assert on_disk["teacher_heun_nfe3"]["class_tv_vs_teacher"] == 0 and sum(on_disk["student_nfe1"]["class_counts"]) == 64
    assert 0 <= on_disk["student_nfe1"]["class_tv"] <= 1
    for entry in on_disk.values():  # the figures beside FID, and a second feature space (experiment=mnist: auto)
        lo, hi = entry["fid_ci95"]
        assert lo < hi and np.isfinite(entry["kid"]) and entry["kid_std"] >= 0 and 0 <= entry["precision"] <= 1
        second = entry["second_extractor"]
        assert second["feature_extractor"].startswith("domain_classifier:digits_classifier_mlp-") and second["fid"] >= 0
        assert {"fid_vs_teacher", "fid_ci95", "kid", "recall", "classifier_test_accuracy"} <= second.keys()
    assert on_disk["teacher_heun_nfe3"]["second_extractor"]["fid_vs_teacher"] == 0.0
    assert (run_dir / "grids" / "teacher_student.png").is_file() and (run_dir / "grids" / "step-000002.png").is_file()
    assert (run_dir / "checkpoints" / "step-2" / "COMPLETE").is_file()
    assert len(list((run_dir / "pairs").glob("shard-*"))) == 2
    assert list((cache / "fid_stats").glob("digits-train-domain-*/stats.npz"))  # reference statistics cached
    assert list(cache.glob("digits_classifier-*/accuracy.json")) and list(cache.glob("digits_classifier-*/key.json"))


def test_exported_student_is_a_diffusers_pipeline(image_run):
    run_dir, _, _ = image_run
    pipe = DDPMPipeline.from_pretrained(run_dir / "student")
    teacher = DDPMPipeline.from_pretrained(run_dir / "teacher")
    assert pipe.unet.config.sample_size == 8
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), teacher.unet.parameters()))


def nothing_written(run_dir) -> bool:
    return not any((run_dir / name).exists() for name in ("teacher", "checkpoints", "pairs", "student"))


@pytest.mark.parametrize(("missing", "message"), [
    ("unet/diffusion_pytorch_model.safetensors", r"not a teacher folder \(missing unet/diffusion_pytorch_model.safetensors\)"),
    ("unet/config.json", r"not a teacher folder \(missing unet/config.json\)"),
])
def test_teacher_folder_without_weights_or_config_is_refused(tmp_path, missing, message):
    path = save_pretrained_atomic(tiny_unet_denoiser(), tmp_path / "teacher")
    (path / missing).unlink()
    with pytest.raises(ConfigError, match=message):
        run(compose_config("train", tiny_overrides(tmp_path / "run", tmp_path, f"teacher.path={path}")))
    assert nothing_written(tmp_path / "run")


def test_data_that_does_not_fit_the_teacher_is_refused(tmp_path):
    path = save_pretrained_atomic(tiny_unet_denoiser(size=16), tmp_path / "teacher")
    with pytest.raises(ConfigError, match=r"\(C, H, W\)=\(1, 8, 8\) do not fit the teacher, which takes \(1, 16, 16\)"):
        run(compose_config("train", tiny_overrides(tmp_path / "run", tmp_path, f"teacher.path={path}")))
    assert nothing_written(tmp_path / "run")


def test_mixed_size_image_folder_is_refused(tmp_path):
    for i, size in enumerate([(8, 8), (9, 9)]):
        (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size, dtype=np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    path = save_pretrained_atomic(tiny_unet_denoiser(), tmp_path / "teacher")
    overrides = tiny_overrides(tmp_path / "run", tmp_path, "data=image_folder", f"data.path={tmp_path / 'imgs'}", f"teacher.path={path}")
    with pytest.raises(ConfigError, match="mixed sizes"):
        run(compose_config("train", overrides))
    assert nothing_written(tmp_path / "run")
