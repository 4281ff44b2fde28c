"""What the domain features see in a student's samples: the class spread (by the shipped MNIST classifier), its
mean top-class probability, and the mean pixel value (ink). A diagnosis beside FID, e.g. 1-step vs 4-step;
evaluation records the first two for every sampler (metrics.json: class_counts, class_tv, ...).

FID is split by class balance: the FID of the training split re-weighted to the sampler's class mix (what the
class spread alone costs) and the sampler's FID re-weighted to the training split's class mix (what is left
when the spread is fixed: the quality within classes). Both on the classifier's features, against the training split.

The first row is the same statistics on the MNIST training split (the FID reference of experiments/gpu); with
--teacher, the next is the teacher's Heun sampler from the same noise.
`python experiments/gpu/sample_stats.py STUDENT_DIR ... [--teacher zoo:mnist_uncond [--heun-steps 18]]
[--each-step] [--num-samples 2000] [--seed 1234] [--out FILE]`
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import OmegaConf

from eval.collect import markdown_table
from eval.features import DomainClassifier, class_probabilities, class_spread, class_total_variation, extract
from eval.fid import Stats, class_mix_weights, fid, stats_of, weighted_stats_of
from eval.images import draw_inputs
from teachers.conditions import class_conditions
from eval.harness import SampleFn, read_student_sigmas, student_sample_fn, teacher_sample_fns, timed_sampling
from teachers.data import load_images
import teachers
from teachers.zoo import zoo_path

BATCH = 250
SHAPE = (1, 28, 28)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class Reference(NamedTuple):
    """The training split as the classifier sees it: features (N, D), predicted labels (N,), class counts, stats."""

    features: np.ndarray
    labels: np.ndarray
    counts: list[int]
    stats: Stats


def reference_of(classifier: DomainClassifier, real: torch.Tensor) -> tuple[Reference, torch.Tensor]:
    """The training split's Reference, and its class probabilities (for its own row)."""
    probs = class_probabilities(classifier, real, BATCH)
    features, labels = extract(classifier, real, BATCH), probs.argmax(1).numpy()
    return Reference(features, labels, class_spread(probs)[0], stats_of(features)), probs


def image_stats(name: str, nfe: int | None, images: torch.Tensor, probs: torch.Tensor, features: np.ndarray, ref: Reference) -> dict:
    """One row: images per predicted class (probs: the classifier's, per image), their total variation from the
    training split's, the mean top-class probability, the mean pixel (images in [-1, 1]), and FID split by class mix."""
    counts, top = class_spread(probs)
    share = np.asarray(counts, dtype=np.float64) / len(probs)
    data_share = np.asarray(ref.counts, dtype=np.float64) / len(ref.labels)
    return {
        "images": name, "NFE": nfe, "per class 0-9": " ".join(map(str, counts)),
        "class TV vs data": class_total_variation(counts, ref.counts),
        "mean top-class probability": top, "mean pixel": float(images.mean()),
        "FID": fid(stats_of(features), ref.stats),
        "FID of the data at this class mix": fid(weighted_stats_of(ref.features, class_mix_weights(ref.labels, share)), ref.stats),
        "FID at the data's class mix": fid(weighted_stats_of(features, class_mix_weights(probs.argmax(1).numpy(), data_share)), ref.stats),
    }


@torch.no_grad()
def sampled_stats(name: str, fn: SampleFn, model, seed: int, num_samples: int, classifier: DomainClassifier, ref: Reference) -> dict:
    """The row of a sampler's images from evaluation's seeded noise (and uniform labels, for a class-conditional
    model), in batches, clamped to [-1, 1] as evaluation does."""
    noise, cond = draw_inputs(num_samples, SHAPE, class_conditions(model.num_classes), seed)
    x, _ = timed_sampling(fn.fn, noise, BATCH, cond, desc=name, reseed=fn.reseed)  # a k-step student: its re-noising per batch
    x = x.clamp(-1, 1)
    return image_stats(name, fn.nfe, x, class_probabilities(classifier, x, BATCH), extract(classifier, x, BATCH), ref)


def student_stats(student_dir: str, classifier: DomainClassifier, seed: int, num_samples: int, ref: Reference, each_step: bool = False) -> list[dict]:
    """The row of a student's samples (its own sigma list for a k-step student); with each_step, one row per prefix
    of that list: the x0 a k-step student holds after each of its steps (which step helps, which hurts)."""
    student = teachers.load(student_dir, key="student").eval()
    sigmas = read_student_sigmas(student_dir) or [student.sigma_max]
    prefixes = [sigmas[:j] for j in range(1, len(sigmas) + 1)] if each_step else [sigmas]
    return [sampled_stats(student_dir if steps == sigmas else f"{student_dir} (first {len(steps)} of its sigmas)",
                          student_sample_fn(student, steps), student, seed, num_samples, classifier, ref) for steps in prefixes]


def teacher_stats(path: str, heun_steps: int, classifier: DomainClassifier, seed: int, num_samples: int, ref: Reference) -> dict:
    """The row of the teacher's Heun sampler (2 x steps - 1 NFE)."""
    teacher = teachers.load(path).eval()
    (label, fn), = teacher_sample_fns(teacher, [{"name": "heun", "num_steps": heun_steps}]).items()
    return sampled_stats(f"{path} ({label})", fn, teacher, seed, num_samples, classifier, ref)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("students", nargs="+", help="exported student folders (a run's student/)")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1234, help="the noise seed, the same for every student")
    parser.add_argument("--teacher", help="also the teacher's Heun samples, e.g. zoo:mnist_uncond")
    parser.add_argument("--heun-steps", type=int, default=18, help="the teacher's Heun steps (18: 35 NFE)")
    parser.add_argument("--each-step", action="store_true",
                        help="a k-step student's x0 after each of its steps too (1, 2, ..., k NFE on its own sigmas)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples={args.num_samples}: give a positive number")
    if args.heun_steps < 1:
        parser.error(f"--heun-steps={args.heun_steps}: give a positive number")
    classifier = DomainClassifier.from_pretrained(zoo_path("mnist_classifier")).eval()
    real, _ = load_images(OmegaConf.load(CONFIGS / "data" / "mnist.yaml"), "train")
    ref, real_probs = reference_of(classifier, real)
    rows = [image_stats("MNIST training split", None, real, real_probs, ref.features, ref)]
    if args.teacher:
        rows.append(teacher_stats(args.teacher, args.heun_steps, classifier, args.seed, args.num_samples, ref))
    rows += [row for path in args.students for row in student_stats(path, classifier, args.seed, args.num_samples, ref, args.each_step)]
    table = markdown_table(rows, list(rows[0]))
    if args.out:
        args.out.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
