"""Image evaluation: every sampler from the same seeds, FID vs the data and vs the teacher's full sampler."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from eval.features import (
    INCEPTION_FILES, DomainClassifier, InceptionCleanFID, InceptionTorchmetrics, class_probabilities, class_spread,
    class_total_variation, extract, find_inception, load_or_train_classifier,
)
from eval.clip import clip_score
from eval.cache import check_key, key_digest, tensor_digest, write_key
from eval.fid import Stats, cached_stats, fid, fid_torchmetrics, stats_of
from eval.harness import SampleFn, timed_sampling, write_metrics
from eval.quality import quality_figures
from teachers.conditions import Conditions
from teachers.data import load_images
from teachers.errors import ConfigError
from teachers.io import sha256_of, write_folder_atomic
from teachers.zoo import ZOO_DIR, resolve_model_path, zoo_path

EXTRACTORS = ("domain", "inception")
GRID_IMAGES = 64


@dataclass
class Extractor:
    """A feature network, the name metrics.json records, and the id that keys cached reference statistics."""

    net: torch.nn.Module
    name: str
    cache_id: str


def domain_extractor(data_cfg, eval_cfg, seed: int, path=None, arch: str = "cnn") -> tuple[Extractor, float]:
    """The dataset's classifier of that arch (at `path`, else shipped, else cached or trained now on the train split)
    and its test accuracy."""
    suffix = "" if arch == "cnn" else f"_{arch}"
    path = Path(resolve_model_path(path)) if path else zoo_path(f"{data_cfg.name}_classifier{suffix}")
    key = None
    if path is None:  # trained here: keyed by the images and labels it learns and is tested on, not by data.name
        key = {"train_and_test_sha256": tensor_digest(*load_images(data_cfg, "train"), *load_images(data_cfg, "test")),
               "classifier_fit": dict(eval_cfg.classifier_fit), "seed": seed, "arch": arch}
        path = Path(eval_cfg.cache_dir) / f"{data_cfg.name}_classifier{suffix}-{key['train_and_test_sha256'][:16]}"
    fit = dict(eval_cfg.classifier_fit) | {"arch": arch}
    model, acc = load_or_train_classifier(path, lambda part: load_images(data_cfg, part), fit, seed, key)
    digest = sha256_of(path / "diffusion_pytorch_model.safetensors")[:12]
    return Extractor(model, f"domain_classifier:{path.name}", f"domain-{digest}"), acc


def second_extractor(data_cfg, eval_cfg) -> tuple[Extractor, float] | None:
    """eval.second_classifier: a domain classifier of another architecture (eval.second_classifier_arch) for a second
    feature space; `auto` = the shipped one for the data set, else one trained into eval.cache_dir; null = none."""
    setting = eval_cfg.get("second_classifier")
    if not setting:
        return None
    path = None if setting == "auto" else setting
    return domain_extractor(data_cfg, eval_cfg, eval_cfg.seed, path=path, arch=eval_cfg.second_classifier_arch)


def inception_extractor(eval_cfg) -> Extractor:
    """Inception-v3 pool features through clean-fid or torchmetrics, from a local, hash-checked weights file."""
    backend = eval_cfg.inception_backend
    weights = find_inception(backend, eval_cfg.inception_path, eval_cfg.inception_sha256)
    net = InceptionCleanFID(weights) if backend == "clean-fid" else InceptionTorchmetrics(weights)
    return Extractor(net, f"inception:{backend}", f"inception-{backend}-{INCEPTION_FILES[backend][0]}")


def build_extractor(data_cfg, eval_cfg, seed: int) -> tuple[Extractor, dict]:
    """The configured extractor and what to record about it (the classifier's test accuracy)."""
    if eval_cfg.feature_extractor not in EXTRACTORS:
        raise ConfigError(f"eval.feature_extractor={eval_cfg.feature_extractor}; allowed for images: {', '.join(EXTRACTORS)}")
    if eval_cfg.feature_extractor == "inception":
        return inception_extractor(eval_cfg), {}
    extractor, acc = domain_extractor(data_cfg, eval_cfg, seed, path=eval_cfg.classifier_path)
    return extractor, {"classifier_test_accuracy": acc}


def reference_stats(extractor: Extractor, images: torch.Tensor, data_name: str, split: str, cache_dir: Path) -> Stats:
    """Feature statistics of the reference images, cached per extractor and image content (so another folder, split
    or split seed under the same data.name never reads them)."""
    key = {"images_sha256": tensor_digest(images), "extractor": extractor.cache_id, "split": split}
    return cached_stats(Path(cache_dir) / "fid_stats" / f"{data_name}-{split}-{extractor.cache_id}-{key['images_sha256'][:16]}",
                        lambda: stats_of(extract(extractor.net, images)), key)


def published_stats(spec: str, extractor: Extractor) -> Stats:
    """clean-fid's published reference statistics, `cleanfid:<dataset>:<split>:<resolution>` (downloads once)."""
    from cleanfid.features import get_reference_statistics

    parts = spec.split(":")
    if len(parts) != 4 or parts[0] != "cleanfid":
        raise ConfigError(f"eval.reference_stats={spec}; expected cleanfid:<dataset>:<split>:<resolution>, e.g. cleanfid:cifar10:train:32")
    if extractor.name != "inception:clean-fid":
        raise ConfigError(f"eval.reference_stats={spec} holds clean-fid Inception statistics; set eval.inception_backend=clean-fid")
    mu, sigma = get_reference_statistics(parts[1], int(parts[3]), mode="clean", split=parts[2])
    return Stats(mu, sigma, 0)


def save_pngs(images: torch.Tensor, folder: Path) -> None:
    """One PNG per image, 000000.png, ...; images NCHW in [-1, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arrays):
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(folder / f"{i:06d}.png")


def save_comparison_grid(panels: dict[str, torch.Tensor], path: Path) -> Path:
    """Side-by-side sample sheets (same seeds in the same cells), left to right in the order given."""
    grids = [make_grid((x[:GRID_IMAGES].clamp(-1, 1) + 1) / 2, nrow=8, padding=2, pad_value=1.0) for x in panels.values()]
    gap = torch.ones(grids[0].shape[0], grids[0].shape[1], 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([t for g in grids for t in (g, gap)][:-1], dim=2), path)
    return path


def draw_inputs(num_samples: int, shape: tuple[int, ...], conditions: Conditions | None, seed: int):
    """The seeded noise (and conds: class labels, or prompt embeddings) every sampler starts from."""
    noise, cond, _ = draw_indexed_inputs(num_samples, shape, conditions, seed)
    return noise, cond


def draw_indexed_inputs(num_samples: int, shape: tuple[int, ...], conditions: Conditions | None, seed: int):
    """draw_inputs, and the condition row of each sample (None when unconditional). For class labels the draw is
    torch.randint(K, ...) on the same generator, as before conditions were tables."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_samples, *shape, generator=gen)
    if conditions is None:
        return noise, None, None
    cond, rows = conditions.draw(num_samples, generator=gen)
    return noise, cond, rows


def inputs_key(eval_cfg, shape: tuple[int, ...], conditions: Conditions | None) -> dict:
    """What fixes the noise and conds of an evaluation (keys cached teacher samples): class tables by their size,
    prompt sets by their embeddings' digest."""
    key = {"num_samples": eval_cfg.num_samples, "seed": eval_cfg.seed, "shape": list(shape)}
    if conditions is not None and conditions.prompts is not None:
        return key | {"num_classes": None, "conditions_sha256": conditions.digest()}
    return key | {"num_classes": None if conditions is None else len(conditions)}


def prompt_accuracy(classifier: DomainClassifier, images: torch.Tensor, named: torch.Tensor) -> float | None:
    """Share of images the domain classifier assigns to the class their prompt names (rows with a named class only):
    the text-to-image analogue of a CLIP score that the shipped MNIST classifier can measure."""
    known = named >= 0
    if not bool(known.any()):
        return None
    predicted = class_probabilities(classifier, images[known.to(images.device)]).argmax(1)
    return float((predicted == named[known].cpu()).double().mean())


def evaluate_images(
    sample_fns: dict[str, SampleFn],
    *,
    data_cfg,
    eval_cfg,
    run_dir: Path,
    shape: tuple[int, ...],
    conditions: Conditions | None,
    full_sampler: str,
    device="cpu",
) -> dict[str, dict]:
    """FID of every sampler vs the reference data and vs the teacher's full sampler; metrics.json, PNGs and a grid.
    With a prompt set whose prompts name classes, also each sampler's prompt accuracy."""
    extractor, extra = build_extractor(data_cfg, eval_cfg, seed=eval_cfg.seed)
    extractor.net.to(device)
    ref_images = load_images(data_cfg, eval_cfg.reference_split)[0].to(device)  # on the device once, for every use below
    if eval_cfg.get("reference_stats"):
        reference = published_stats(eval_cfg.reference_stats, extractor)
    else:
        reference = reference_stats(extractor, ref_images, data_cfg.name, eval_cfg.reference_split, eval_cfg.cache_dir)
    noise, cond, rows = draw_indexed_inputs(eval_cfg.num_samples, shape, conditions, eval_cfg.seed)
    noise = noise.to(device)  # the conds stay in CPU memory: each sampling batch moves its own (timed_sampling)
    samples, seconds = {}, {}
    key = inputs_key(eval_cfg, shape, conditions)
    for label, sample_fn in sample_fns.items():
        x, seconds[label] = cached_sampling(sample_fn, noise, cond, eval_cfg, key, label)
        samples[label] = x.float().clamp(-1, 1)  # the images as saved: FID sees valid pixels, as in every FID protocol
        save_pngs(samples[label].cpu(), run_dir / "samples" / label)
    # Reference images give KID, precision/recall and the interval; published statistics give FID only.
    with_quality = eval_cfg.get("quality_figures", False) and not eval_cfg.get("reference_stats")
    spaces = feature_space_figures(extractor, reference, ref_images, samples, full_sampler, eval_cfg, with_quality)
    second = second_extractor(data_cfg, eval_cfg)
    if second is not None:
        second_net, second_acc = second
        second_net.net.to(device)
        second_ref = reference_stats(second_net, ref_images, data_cfg.name, eval_cfg.reference_split, eval_cfg.cache_dir)
        second_figures = feature_space_figures(second_net, second_ref, ref_images, samples, full_sampler, eval_cfg, True)
    metrics = {}
    for label, sample_fn in tqdm(sample_fns.items(), desc="FID", mininterval=2):
        entry = {
            "nfe": sample_fn.nfe, "num_samples": eval_cfg.num_samples, "seconds_per_sample": seconds[label],
            "feature_extractor": extractor.name, "seed": eval_cfg.seed, "reference": eval_cfg.get("reference_stats") or f"{data_cfg.name}/{eval_cfg.reference_split}",
            "reference_num": reference.num, **spaces[label], **extra,
        }
        if eval_cfg.cross_check:
            entry["fid_torchmetrics"] = fid_torchmetrics(extractor.net, ref_images, samples[label])
        if second is not None:
            entry["second_extractor"] = {"feature_extractor": second_net.name, "classifier_test_accuracy": second_acc, **second_figures[label]}
        metrics[label] = entry
    if isinstance(extractor.net, DomainClassifier):
        add_class_spread(metrics, extractor.net, ref_images, samples, full_sampler)
        if conditions is not None and conditions.prompts is not None and conditions.classes is not None:
            for label, x in samples.items():
                metrics[label]["prompt_accuracy"] = prompt_accuracy(extractor.net, x, conditions.classes[rows])
    if conditions is not None and conditions.prompts is not None and eval_cfg.get("clip_model_path"):
        prompts = [conditions.prompts[i] for i in rows.tolist()]
        for label, x in tqdm(samples.items(), desc="CLIP score", mininterval=2):
            metrics[label]["clip_score"] = clip_score(x, prompts, eval_cfg.clip_model_path)
    grid_panels = {full_sampler: samples[full_sampler], **{k: v for k, v in samples.items() if k.startswith("student")}}
    save_comparison_grid({k: v.cpu() for k, v in grid_panels.items()}, run_dir / "grids" / "teacher_student.png")
    write_metrics(run_dir, metrics)
    return metrics


SHIPPED_SAMPLES = ZOO_DIR / "teacher_samples"  # read-only entries of the same layout as eval.cache_dir/teacher_samples


def cached_sampling(sample_fn: SampleFn, noise: torch.Tensor, cond, eval_cfg, inputs_key: dict, label: str) -> tuple[torch.Tensor, float]:
    """A deterministic sampler's samples (the teacher's full sampler) from eval.cache_dir/teacher_samples, keyed by the
    network's weights, the sampler, and the seed, count, shape and classes that fix the noise and labels; sampled (and
    stored, atomically) on a miss, with the seconds per sample measured then. Others are always sampled."""
    if sample_fn.cache_key is None or not eval_cfg.get("cache_teacher_samples", True):
        return timed_sampling(sample_fn.fn, noise, eval_cfg.batch_size, cond, desc=label)
    key = sample_fn.cache_key() | inputs_key
    name = f"{label}-{key_digest(key)[:16]}"
    path = Path(eval_cfg.cache_dir) / "teacher_samples" / name
    if not (path / "samples.npz").is_file() and (SHIPPED_SAMPLES / name / "samples.npz").is_file():
        path = SHIPPED_SAMPLES / name  # the default evaluation of a shipped teacher: its samples ship with it
    if not (path / "samples.npz").is_file():
        x, seconds = timed_sampling(sample_fn.fn, noise, eval_cfg.batch_size, cond, desc=label)

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            np.savez(tmp / "samples.npz", samples=x.float().cpu().numpy(), seconds_per_sample=seconds)
            write_key(tmp, key)

        write_folder_atomic(path, write, keep_existing=True)
    check_key(path, key)
    with np.load(path / "samples.npz") as data:
        return torch.from_numpy(data["samples"]).to(noise.device), float(data["seconds_per_sample"])


def feature_space_figures(extractor: Extractor, reference: Stats, ref_images: torch.Tensor, samples: dict[str, torch.Tensor],
                          full_sampler: str, eval_cfg, with_quality: bool) -> dict[str, dict]:
    """Per sampler in one feature space: fid (vs the reference), fid_vs_teacher (vs the full sampler), and with_quality
    the figures of eval.quality (fid_ci95, kid, kid_std, precision, recall, density, coverage)."""
    features = {label: extract(extractor.net, x) for label, x in samples.items()}
    stats = {label: stats_of(f) for label, f in features.items()}
    ref_features = extract(extractor.net, ref_images) if with_quality else None
    out = {}
    for label in samples:
        out[label] = {"fid": fid(stats[label], reference), "fid_vs_teacher": fid(stats[label], stats[full_sampler])}
        if with_quality:
            out[label] |= quality_figures(extractor.net, reference, ref_images, ref_features, samples[label], features[label], eval_cfg)
    return out


def add_class_spread(metrics: dict[str, dict], classifier: DomainClassifier, ref_images: torch.Tensor,
                     samples: dict[str, torch.Tensor], full_sampler: str) -> None:
    """Per sampler, the domain classifier's view of mode coverage: `class_counts`, `mean_top_class_probability`,
    and `class_tv` / `class_tv_vs_teacher`, the total variation of its class spread from the reference images' and
    from the full sampler's (a one-step student can lose modes that FID only shows as a number)."""
    reference_counts, _ = class_spread(class_probabilities(classifier, ref_images))
    spread = {label: class_spread(class_probabilities(classifier, x)) for label, x in samples.items()}
    for label, (counts, top) in spread.items():
        metrics[label] |= {
            "class_counts": counts, "mean_top_class_probability": top,
            "class_tv": class_total_variation(counts, reference_counts),
            "class_tv_vs_teacher": class_total_variation(counts, spread[full_sampler][0]),
        }


def full_sampler_label(labels: list[str]) -> str:
    """The teacher sampler with the most network evaluations: the 'full sampler' FIDs are measured against."""
    teachers = [label for label in labels if label.startswith("teacher_")]
    if not teachers:
        raise ConfigError("eval.teacher_samplers is empty; image evaluation needs the teacher's full sampler")
    return max(teachers, key=lambda label: int(label.rsplit("nfe", 1)[1]))

