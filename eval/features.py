"""Feature extractors for FID: Inception (clean-fid or torchmetrics weights) and a domain classifier.

Every extractor maps images NCHW float32 in [-1, 1] to features (N, D) float64 numpy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from tqdm.auto import tqdm

from eval.cache import check_key, write_key
from teachers.errors import ConfigError
from teachers.io import sha256_of, write_folder_atomic

ACCURACY_FILE = "accuracy.json"
# The Inception-v3 weights each library loads, where it looks for them, and the sha256 prefix published
# in the file name (torch.hub's check_hash convention); clean-fid's TorchScript file carries none.
INCEPTION_FILES = {
    "torchmetrics": ("weights-inception-2015-12-05-6726825d.pth", Path(torch.hub.get_dir()) / "checkpoints", "6726825d"),
    "clean-fid": ("inception-2015-12-05.pt", Path("/tmp"), None),
}


CLASSIFIER_ARCHS = ("cnn", "mlp")


class DomainClassifier(ModelMixin, ConfigMixin):
    """A small classifier; its penultimate layer (feature_dim) is the FID feature space for its domain.

    arch `cnn`: two conv layers (the default extractor); `mlp`: two dense layers on the pixels, a second opinion of
    another architecture (a claim that holds in only one feature space is not a claim).
    x: NCHW float32 in [-1, 1]; forward returns features (B, feature_dim), `logits` the class scores.
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 arch: str = "cnn", image_size: int = 28):
        super().__init__()
        if arch == "cnn":
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, feature_dim), nn.GELU(),
            )
        elif arch == "mlp":
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(in_channels * image_size**2, 8 * width), nn.ReLU(), nn.Linear(8 * width, feature_dim), nn.ReLU(),
            )
        else:
            raise ConfigError(f"classifier arch={arch}; allowed: {', '.join(CLASSIFIER_ARCHS)}")
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.no_grad()
def accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of images classified correctly."""
    preds = torch.cat([model.logits(x).argmax(1) for x in images.split(batch_size)])
    return float((preds == labels).float().mean())


def train_classifier(images, labels, *, steps: int, batch_size: int, lr: float, seed: int, progress: bool = True,
                     arch: str = "cnn") -> DomainClassifier:
    """Cross-entropy training with light shift augmentation; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DomainClassifier(in_channels=images.shape[1], num_classes=int(labels.max()) + 1, arch=arch, image_size=images.shape[-1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="domain classifier", disable=not progress, mininterval=2):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model.logits(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


UNLABELLED = ("eval.feature_extractor=domain trains a classifier on the data's class labels, and these images are "
              "unlabelled (a folder names classes by its subfolders); use eval.feature_extractor=inception, or give a "
              "trained classifier as eval.classifier_path")


def load_or_train_classifier(path: Path, load_split, fit: dict, seed: int, key: dict | None = None) -> tuple[DomainClassifier, float]:
    """The classifier in path, or one trained on load_split("train") and saved there; and its test accuracy. With a
    key (the data it is trained and tested on), a folder made for another key is refused."""
    path = Path(path)
    if not (path / ACCURACY_FILE).is_file():
        train, test = load_split("train"), load_split("test")  # only read when there is something to train
        if bool((train[1] < 0).any()):
            raise ConfigError(UNLABELLED)
        model = train_classifier(*train, seed=seed, **fit)
        acc = accuracy(model, *test)

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            (tmp / ACCURACY_FILE).write_text(json.dumps({"test_accuracy": acc, "num_test": len(test[0])}) + "\n")
            if key is not None:
                write_key(tmp, key)

        write_folder_atomic(path, write, keep_existing=True)  # parallel sweep runs may train it at once
    check_key(path, key)
    model = DomainClassifier.from_pretrained(path, use_safetensors=True).eval().requires_grad_(False)
    return model, json.loads((path / ACCURACY_FILE).read_text())["test_accuracy"]


def find_inception(backend: str, path: str | None = None, sha256: str | None = None) -> Path:
    """The Inception weights file for a backend: `path`, else the library's cache; hash-checked."""
    if backend not in INCEPTION_FILES:
        raise ConfigError(f"eval.inception_backend={backend}; allowed: {', '.join(INCEPTION_FILES)}")
    name, cache, prefix = INCEPTION_FILES[backend]
    file = Path(path) if path else cache / name
    if not file.is_file():
        raise ConfigError(
            f"Inception weights for {backend} not found at {file}: put {name} there (or give eval.inception_path=FILE); "
            "without it, use eval.feature_extractor=domain"
        )
    expected = sha256 or prefix
    actual = sha256_of(file)
    if expected and not actual.startswith(expected.lower()):
        raise ConfigError(f"{file} is not the expected Inception weights: sha256 {actual[:16]}..., expected {expected}...")
    return file


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float NCHW -> uint8 NCHW with three channels (grey images repeated), as Inception takes."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionTorchmetrics(nn.Module):
    """torch-fidelity's Inception-v3 (pool3, 2048-D) as torchmetrics loads it, from a local weights file."""

    def __init__(self, weights: Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_uint8(images)).reshape(len(images), -1)


class InceptionCleanFID(nn.Module):
    """clean-fid's TorchScript Inception-v3 with its clean (PIL bicubic) resize to 299x299."""

    def __init__(self, weights: Path):
        super().__init__()
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.net = InceptionV3W(str(weights.parent), download=False, resize_inside=False)
        self.resize = build_resizer("clean")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hwc = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        resized = torch.from_numpy(np.stack([self.resize(im) for im in hwc])).permute(0, 3, 1, 2)
        return self.net(resized.to(next(self.net.parameters(), torch.empty(0)).device))


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Features (N, D) float64 of images NCHW in [-1, 1]."""
    return torch.cat([extractor(x).double().cpu() for x in images.split(batch_size)]).numpy()


@torch.no_grad()
def class_probabilities(classifier: DomainClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Softmax class probabilities (N, C) float64 on the CPU of images NCHW in [-1, 1]."""
    return torch.cat([classifier.logits(x).double().softmax(1).cpu() for x in images.split(batch_size)])


def class_spread(probs: torch.Tensor) -> tuple[list[int], float]:
    """Images per predicted class, and the mean top-class probability (how clear-cut the images are)."""
    return torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist(), float(probs.max(1).values.mean())


def class_total_variation(counts_a: list[int], counts_b: list[int]) -> float:
    """Total variation distance of two class histograms, 0 (same spread) to 1 (disjoint): mode coverage beside FID."""
    a, b = torch.tensor(counts_a, dtype=torch.float64), torch.tensor(counts_b, dtype=torch.float64)
    return float(0.5 * (a / a.sum() - b / b.sum()).abs().sum())
