"""Cached reference statistics and trained classifiers are keyed by the data that defines them, not by data.name."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from eval.cache import write_key
from eval.fid import cached_stats, stats_of
from eval.images import domain_extractor, reference_stats
from teachers.conditions import class_conditions
from teachers.data import load_images
from teachers.errors import ConfigError


def image_folder(root, offset):
    """Two classes of 8x8 grey images whose pixel values depend on `offset` (two folders, two data sets)."""
    rng = np.random.default_rng(offset)
    for cls in ("a", "b"):
        for i in range(10):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return OmegaConf.create({"kind": "image", "name": "image_folder", "source": "folder", "path": str(root), "mode": "L",
                             "test_fraction": 0.2, "split_seed": 0})


def eval_cfg(cache):
    return OmegaConf.create({"classifier_path": None, "cache_dir": str(cache), "classifier_fit": {"steps": 2, "batch_size": 4, "lr": 1e-3}})


def test_two_image_folders_get_their_own_classifier_and_statistics(tmp_path):
    first, second = image_folder(tmp_path / "one", 1), image_folder(tmp_path / "two", 2)
    cache = tmp_path / "cache"
    ex_one, _ = domain_extractor(first, eval_cfg(cache), seed=0)
    ex_two, _ = domain_extractor(second, eval_cfg(cache), seed=0)
    assert len(list(cache.glob("image_folder_classifier-*"))) == 2 and ex_one.cache_id != ex_two.cache_id
    images_one, images_two = load_images(first, "train")[0], load_images(second, "train")[0]
    a = reference_stats(ex_one, images_one, "image_folder", "train", cache)
    b = reference_stats(ex_one, images_two, "image_folder", "train", cache)  # same extractor, other images
    assert len(list((cache / "fid_stats").iterdir())) == 2 and not np.array_equal(a.mu, b.mu)
    again = first.copy()
    again.split_seed = 1  # another split of the same folder: another training split, another entry
    reference_stats(ex_one, load_images(again, "train")[0], "image_folder", "train", cache)
    assert len(list((cache / "fid_stats").iterdir())) == 3


def test_an_entry_made_for_another_key_is_refused(tmp_path):
    stats = stats_of(np.random.default_rng(0).normal(size=(20, 3)))
    cached_stats(tmp_path / "ref", lambda: stats, {"images_sha256": "aaa", "split": "train"})
    write_key(tmp_path / "ref", {"images_sha256": "bbb", "split": "train"})  # as if another data set had written it
    with pytest.raises(ConfigError, match="made for images_sha256='bbb', not 'aaa'"):
        cached_stats(tmp_path / "ref", lambda: stats, {"images_sha256": "aaa", "split": "train"})


def test_teacher_samples_are_cached_by_weights_sampler_and_inputs(tmp_path):
    """A hit returns the stored samples without sampling; any change of weights, sampler or inputs misses; a student
    (no cache key) is always sampled; a folder left half-written (a temporary one) is never read."""
    import torch
    from conftest import tiny_unet_denoiser

    from eval.harness import SampleFn, teacher_sample_fns
    from eval.images import cached_sampling

    calls = []
    cfg = OmegaConf.create({"cache_dir": str(tmp_path), "batch_size": 4})
    inputs = {"num_samples": 4, "seed": 1, "shape": [1, 8, 8], "num_classes": None}
    noise = torch.randn(4, 1, 8, 8)

    def counted(fns):
        (label, fn), = fns.items()
        return label, SampleFn(fn.nfe, lambda z, c=None: calls.append(1) or fn.fn(z, c), fn.cache_key)

    def sampled(fn, label, inputs):
        """Whether cached_sampling called the sampler (a warm-up batch and the batches, on a miss)."""
        before = len(calls)
        cached_sampling(fn, noise, None, cfg, inputs, label)
        return len(calls) > before

    teacher = tiny_unet_denoiser()
    label, fn = counted(teacher_sample_fns(teacher, [{"name": "heun", "num_steps": 2}]))
    (tmp_path / "teacher_samples" / f"{label}-x.tmp-1").mkdir(parents=True)  # a writer that died
    assert sampled(fn, label, inputs) and not sampled(fn, label, inputs)
    first, _ = cached_sampling(fn, noise, None, cfg, inputs, label)
    torch.testing.assert_close(first, fn.fn(noise))  # cached == recomputed
    assert sampled(fn, label, inputs | {"seed": 2}) and sampled(fn, label, inputs | {"num_samples": 5})
    label2, fn2 = counted(teacher_sample_fns(tiny_unet_denoiser(), [{"name": "heun", "num_steps": 2}]))  # other weights
    label3, fn3 = counted(teacher_sample_fns(teacher, [{"name": "heun", "num_steps": 3}]))
    assert sampled(fn2, label2, inputs) and sampled(fn3, label3, inputs)
    student = SampleFn(1, lambda z, c=None: calls.append(1) or z)
    assert sampled(student, "student_nfe1", inputs) and sampled(student, "student_nfe1", inputs)


def test_a_given_classifier_path_is_the_one_used(tmp_path):
    """eval.classifier_path names the domain classifier (trained into that folder when it has none), not the cache's."""
    from eval.images import build_extractor

    data = image_folder(tmp_path / "one", 1)
    cfg = eval_cfg(tmp_path / "cache")
    cfg.classifier_path, cfg.feature_extractor = str(tmp_path / "mine"), "domain"
    extractor, extra = build_extractor(data, cfg, seed=0)
    assert extractor.name == "domain_classifier:mine" and (tmp_path / "mine" / "accuracy.json").is_file()
    assert not (tmp_path / "cache").exists() and 0 <= extra["classifier_test_accuracy"] <= 1


def test_shipped_teacher_samples_are_read_when_the_cache_has_none(tmp_path, monkeypatch):
    """An entry in teachers/zoo/teacher_samples (the same layout) is a hit for an empty eval.cache_dir."""
    import shutil

    import torch
    from conftest import tiny_unet_denoiser

    import eval.images as images
    from eval.harness import teacher_sample_fns

    (label, fn), = teacher_sample_fns(tiny_unet_denoiser(), [{"name": "heun", "num_steps": 2}]).items()
    inputs = {"num_samples": 4, "seed": 1, "shape": [1, 8, 8], "num_classes": None}
    noise = torch.randn(4, 1, 8, 8)
    made, _ = images.cached_sampling(fn, noise, None, OmegaConf.create({"cache_dir": str(tmp_path / "a"), "batch_size": 4}), inputs, label)
    shipped = tmp_path / "shipped"
    shutil.copytree(tmp_path / "a" / "teacher_samples", shipped)
    monkeypatch.setattr(images, "SHIPPED_SAMPLES", shipped)
    never = type(fn)(fn.nfe, lambda z, c=None: pytest.fail("sampled although the entry ships"), fn.cache_key)
    read, _ = images.cached_sampling(never, noise, None, OmegaConf.create({"cache_dir": str(tmp_path / "b"), "batch_size": 4}), inputs, label)
    assert torch.equal(read, made) and not (tmp_path / "b").exists()  # the same file read back


def test_the_shipped_mnist_cond_samples_are_its_teachers_heun_samples():
    """Keyed by the shipped teacher's weights, and its first rows equal a fresh Heun-35 run (float tolerance)."""
    import json

    import torch

    from eval.cache import key_digest
    from eval.harness import denoiser_digest, teacher_sample_fns
    from eval.images import SHIPPED_SAMPLES, draw_inputs
    import teachers

    teacher = teachers.load("teachers/zoo/mnist_cond")
    (entry,) = [p for p in SHIPPED_SAMPLES.iterdir() if json.loads((p / "key.json").read_text())["num_classes"] == 10]
    key = json.loads((entry / "key.json").read_text())
    assert key["teacher_sha256"] == denoiser_digest(teacher) and entry.name.endswith(key_digest(key)[:16])
    noise, cond = draw_inputs(key["num_samples"], tuple(key["shape"]), class_conditions(key["num_classes"]), key["seed"])
    (label, fn), = teacher_sample_fns(teacher, [{"name": key["sampler"], "num_steps": key["num_steps"]}]).items()
    assert entry.name.startswith(label)
    with torch.no_grad():
        fresh = fn.fn(noise[:6], cond[:6])
    with np.load(entry / "samples.npz") as data:
        torch.testing.assert_close(torch.from_numpy(data["samples"][:6]), fresh, rtol=1e-4, atol=1e-4)


def test_a_bfloat16_teachers_digest_is_its_bytes():
    """teacher.dtype=bfloat16 keys cached samples too (NumPy has no bfloat16); float32 digests are unchanged."""
    import hashlib

    from teachers.io import denoiser_digest

    net = torch.nn.Linear(3, 2)
    half = torch.nn.Linear(3, 2).to(torch.bfloat16)
    assert denoiser_digest(half) != denoiser_digest(net) and len(denoiser_digest(half)) == 64
    expected = hashlib.sha256(f"Linear{sorted(dict.fromkeys(('sigma_min', 'sigma_max', 'sigma_data', 'scale', 'null_class')).items())}".encode())
    for name, tensor in sorted(net.state_dict().items()):
        expected.update(name.encode())
        expected.update(tensor.numpy().tobytes())
    assert denoiser_digest(net) == expected.hexdigest()
