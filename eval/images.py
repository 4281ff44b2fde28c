"""Image evaluation: every sampler from the same seeds, FID vs the data and vs the teacher's full sampler."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from eval.features import (
    INCEPTION_FILES, DomainClassifier, InceptionCleanFID, InceptionTorchmetrics, class_probabilities, class_spread,
    class_total_variation, extract, find_inception, load_or_train_classifier,
)
from eval.clip import clip_pair_scores, load_clip
from eval.cache import check_key, key_digest, tensor_digest, write_key
from eval.fid import Stats, cached_stats, fid, fid_torchmetrics, stats_of
from eval.harness import SampleFn, timed_sampling, write_metrics
from eval.shard import Shard
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


def save_pngs(images: torch.Tensor, folder: Path, first: int = 0) -> None:
    """One PNG per image, named by its seed index (first, first + 1, ...: 000000.png, ...); images NCHW in [-1, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arrays, start=first):
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


def prompt_accuracy(probabilities: np.ndarray, named: torch.Tensor) -> float | None:
    """Share of images the domain classifier (its class probabilities, N x C) assigns to the class their prompt names
    (rows with a named class only): the text-to-image analogue of a CLIP score that the shipped MNIST classifier can
    measure."""
    known = (named >= 0).cpu().numpy()
    if not known.any():
        return None
    return float((probabilities[known].argmax(1) == named.cpu().numpy()[known]).mean())


@dataclass
class Views:
    """What the figures need of one sampler's images, a row per image in seed order: its features in each feature
    space, the domain classifier's class probabilities, its CLIP score; the images of the sample sheet; and the wall
    seconds per sample of each process that sampled. Made per process (its share) and joined on the main one."""

    features: np.ndarray
    second: np.ndarray | None
    probabilities: np.ndarray | None
    clip: np.ndarray | None
    sheet: torch.Tensor
    seconds: list[float]


def image_views(x: torch.Tensor, first: int, seconds: float, extractor: Extractor, second: Extractor | None,
                clip_scorer=None) -> Views:
    """Views of one process's images x (NCHW in [-1, 1]; seed indices first, first + 1, ...)."""
    probabilities = class_probabilities(extractor.net, x).numpy() if isinstance(extractor.net, DomainClassifier) else None
    return Views(
        features=extract(extractor.net, x), second=None if second is None else extract(second.net, x),
        probabilities=probabilities, clip=None if clip_scorer is None else clip_scorer(x, first),
        sheet=x[: max(0, GRID_IMAGES - first)].cpu(), seconds=[seconds],
    )


def join_views(parts: list[Views | None]) -> Views:
    """The processes' views of one sampler, in rank order (a process with no share gives None)."""
    parts = [v for v in parts if v is not None]

    def rows(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)

    return Views(rows([v.features for v in parts]), rows([v.second for v in parts]), rows([v.probabilities for v in parts]),
                 rows([v.clip for v in parts]), torch.cat([v.sheet for v in parts]), [s for v in parts for s in v.seconds])


def share_views(sample_fn: SampleFn, label: str, inputs: tuple, eval_cfg, run_dir: Path, shard: Shard, view) -> Views | None:
    """This process's share of one sampler: its images sampled (or read from the cache), saved as PNGs under their
    seed index, and seen by view(x, first, seconds); None when the process has no share."""
    noise, cond, key = inputs
    x, seconds = cached_sampling(sample_fn, noise, cond, eval_cfg, key, label, shard)
    if x is None:
        return None
    x = x.float().clamp(-1, 1)  # the images as saved: FID sees valid pixels, as in every FID protocol
    first = shard.span(len(noise), eval_cfg.batch_size).start
    save_pngs(x.cpu(), run_dir / "samples" / label, first)
    return view(x, first, seconds)


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
    shard: Shard = Shard(),
) -> dict[str, dict]:
    """FID of every sampler vs the reference data and vs the teacher's full sampler; metrics.json, PNGs and a grid.
    With a prompt set whose prompts name classes, also each sampler's prompt accuracy. With a shard, each process
    samples and extracts the features of its share of the seeds; the main process joins them and computes the figures
    once ({} on the others)."""
    extractor, extra = shard.main_first(lambda: build_extractor(data_cfg, eval_cfg, seed=eval_cfg.seed))
    extractor.net.to(device)
    second = shard.main_first(lambda: second_extractor(data_cfg, eval_cfg))
    if second is not None:
        second[0].net.to(device)
    noise, cond, rows = draw_indexed_inputs(eval_cfg.num_samples, shape, conditions, eval_cfg.seed)
    noise = noise.to(device)  # the conds stay in CPU memory: each sampling batch moves its own (timed_sampling)
    inputs = (noise, cond, inputs_key(eval_cfg, shape, conditions))
    scorer = clip_scorer(conditions, rows, eval_cfg)
    view = functools.partial(image_views, extractor=extractor, second=None if second is None else second[0], clip_scorer=scorer)
    mine = {label: share_views(fn, label, inputs, eval_cfg, run_dir, shard, view) for label, fn in sample_fns.items()}
    parts = shard.gather(mine)
    if not shard.main:
        return {}
    views = {label: join_views([part[label] for part in parts]) for label in sample_fns}
    metrics = image_figures(views, extractor, second, data_cfg, eval_cfg, full_sampler, device)
    for label, sample_fn in sample_fns.items():
        metrics[label] |= {"nfe": sample_fn.nfe, "num_samples": eval_cfg.num_samples, "num_processes": shard.num_processes,
                           "seconds_per_sample": float(np.mean(views[label].seconds)), **extra}
    if conditions is not None and conditions.prompts is not None and conditions.classes is not None:
        for label, v in views.items():
            if v.probabilities is not None:  # the domain classifier's view
                metrics[label]["prompt_accuracy"] = prompt_accuracy(v.probabilities, conditions.classes[rows])
    grid_panels = {full_sampler: views[full_sampler].sheet, **{k: v.sheet for k, v in views.items() if k.startswith("student")}}
    save_comparison_grid(grid_panels, run_dir / "grids" / "teacher_student.png")
    write_metrics(run_dir, metrics)
    return metrics


def clip_scorer(conditions: Conditions | None, rows: torch.Tensor | None, eval_cfg):
    """(images, first seed index) -> their CLIP scores against their own prompts, with eval.clip_model_path and a
    prompt set; else None."""
    if conditions is None or conditions.prompts is None or not eval_cfg.get("clip_model_path"):
        return None
    model, processor = load_clip(eval_cfg.clip_model_path)
    prompts = [conditions.prompts[i] for i in rows.tolist()]
    return lambda x, first: clip_pair_scores(x, prompts[first : first + len(x)], model, processor).numpy()


def image_figures(views: dict[str, Views], extractor: Extractor, second: tuple[Extractor, float] | None, data_cfg, eval_cfg,
                  full_sampler: str, device) -> dict[str, dict]:
    """Every sampler's figures from its joined views: FID vs the reference and the full sampler in each feature space
    with the quality figures, the torchmetrics cross-check, class spread and CLIP score."""
    ref_images = load_images(data_cfg, eval_cfg.reference_split)[0].to(device)  # on the device once, for every use below
    if eval_cfg.get("reference_stats"):
        reference = published_stats(eval_cfg.reference_stats, extractor)
    else:
        reference = reference_stats(extractor, ref_images, data_cfg.name, eval_cfg.reference_split, eval_cfg.cache_dir)
    # Reference images give KID, precision/recall and the interval; published statistics give FID only.
    with_quality = eval_cfg.get("quality_figures", False) and not eval_cfg.get("reference_stats")
    ref_features = extract(extractor.net, ref_images) if with_quality or eval_cfg.cross_check else None
    features = {label: v.features for label, v in views.items()}
    metrics = feature_space_figures(reference, ref_features if with_quality else None, features, full_sampler, eval_cfg)
    for label, entry in metrics.items():
        entry |= {"feature_extractor": extractor.name, "seed": eval_cfg.seed, "reference_num": reference.num,
                  "reference": eval_cfg.get("reference_stats") or f"{data_cfg.name}/{eval_cfg.reference_split}"}
        if eval_cfg.cross_check:
            entry["fid_torchmetrics"] = fid_torchmetrics(ref_features, features[label])
        if views[label].clip is not None:
            entry["clip_score"] = float(np.clip(views[label].clip, 0, None).mean())  # floored at 0, as torchmetrics' CLIPScore
    if second is not None:
        net, accuracy = second
        second_ref = reference_stats(net, ref_images, data_cfg.name, eval_cfg.reference_split, eval_cfg.cache_dir)
        second_features = {label: v.second for label, v in views.items()}
        figures = feature_space_figures(second_ref, extract(net.net, ref_images), second_features, full_sampler, eval_cfg)
        for label, entry in metrics.items():
            entry["second_extractor"] = {"feature_extractor": net.name, "classifier_test_accuracy": accuracy, **figures[label]}
    if isinstance(extractor.net, DomainClassifier):
        probabilities = {label: v.probabilities for label, v in views.items()}
        add_class_spread(metrics, class_probabilities(extractor.net, ref_images).numpy(), probabilities, full_sampler)
    return metrics


SHIPPED_SAMPLES = ZOO_DIR / "teacher_samples"  # read-only entries of the same layout as eval.cache_dir/teacher_samples


def cached_sampling(sample_fn: SampleFn, noise: torch.Tensor, cond, eval_cfg, inputs_key: dict, label: str,
                    shard: Shard = Shard()) -> tuple[torch.Tensor | None, float]:
    """This process's share of a sampler's samples (all of them with one process; None for a process with no share)
    and the wall seconds per sample. A deterministic sampler's (the teacher's full sampler) come from
    eval.cache_dir/teacher_samples, keyed by the network's weights, the sampler, and the seed, count, shape and classes
    that fix the noise and labels; sampled (each process its share, stored whole by the main process, atomically) on a
    miss, with the seconds per sample measured then. Others are always sampled."""
    part = shard.span(len(noise), eval_cfg.batch_size)

    def sample() -> tuple[torch.Tensor | None, float]:
        if part.start == part.stop:
            return None, 0.0
        return timed_sampling(sample_fn.fn, noise[part], eval_cfg.batch_size, None if cond is None else cond[part],
                              desc=label if shard.main else "", first=part.start, reseed=sample_fn.reseed)

    if sample_fn.cache_key is None or not eval_cfg.get("cache_teacher_samples", True):
        return sample()
    key = sample_fn.cache_key() | inputs_key
    name = f"{label}-{key_digest(key)[:16]}"
    path = Path(eval_cfg.cache_dir) / "teacher_samples" / name
    if not (path / "samples.npz").is_file() and (SHIPPED_SAMPLES / name / "samples.npz").is_file():
        path = SHIPPED_SAMPLES / name  # the default evaluation of a shipped teacher: its samples ship with it
    if not (path / "samples.npz").is_file():  # every process looks before the gather below, where the main one writes
        x, seconds = sample()
        parts = [p for p in shard.gather(None if x is None else (x.float().cpu().numpy(), seconds)) if p is not None]
        seconds = float(np.mean([s for _, s in parts]))
        if shard.main:

            def write(tmp: Path) -> None:
                tmp.mkdir(parents=True)
                np.savez(tmp / "samples.npz", samples=np.concatenate([x for x, _ in parts]), seconds_per_sample=seconds)
                write_key(tmp, key)

            write_folder_atomic(path, write, keep_existing=True)
        shard.barrier()
        return x, seconds
    check_key(path, key)
    with np.load(path / "samples.npz") as data:
        x = torch.from_numpy(data["samples"][part]).to(noise.device)
        return (x if len(x) else None), float(data["seconds_per_sample"])


def feature_space_figures(reference: Stats, ref_features: np.ndarray | None, features: dict[str, np.ndarray],
                          full_sampler: str, eval_cfg) -> dict[str, dict]:
    """Per sampler in one feature space: fid (vs the reference), fid_vs_teacher (vs the full sampler), and with the
    reference's features the figures of eval.quality (fid_ci95, kid, kid_std, precision, recall, density, coverage)."""
    stats = {label: stats_of(f) for label, f in features.items()}
    out = {}
    for label in features:
        out[label] = {"fid": fid(stats[label], reference), "fid_vs_teacher": fid(stats[label], stats[full_sampler])}
        if ref_features is not None:
            out[label] |= quality_figures(reference, ref_features, features[label], eval_cfg)
    return out


def add_class_spread(metrics: dict[str, dict], reference_probabilities: np.ndarray, probabilities: dict[str, np.ndarray],
                     full_sampler: str) -> None:
    """Per sampler, the domain classifier's view of mode coverage (from class probabilities, N x C): `class_counts`,
    `mean_top_class_probability`, and `class_tv` / `class_tv_vs_teacher`, the total variation of its class spread from
    the reference images' and from the full sampler's (a one-step student can lose modes that FID only shows as a
    number)."""
    reference_counts, _ = class_spread(torch.from_numpy(reference_probabilities))
    spread = {label: class_spread(torch.from_numpy(p)) for label, p in probabilities.items()}
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

