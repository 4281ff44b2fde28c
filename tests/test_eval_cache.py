"""Cached reference statistics and trained classifiers are keyed by the data that defines them, not by data.name."""
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from eval.cache import write_key
from eval.fid import cached_stats, stats_of
from eval.images import domain_extractor, reference_stats
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
