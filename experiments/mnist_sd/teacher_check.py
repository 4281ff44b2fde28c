"""The shipped miniature Stable Diffusion through stock diffusers: prompt accuracy of its own 50-step sampler (the
pipeline's PNDM scheduler) at several guidance scales, judged by the shipped MNIST classifier, and seconds per image.

    python experiments/mnist_sd/teacher_check.py [--teacher zoo:mnist_sd] [--num-images 1000] [--scales 1 2 3 5]

Writes experiments/mnist_sd/teacher_check.json and prints a table. Prompts: every phrasing of every digit
(teachers.mini_sd.prompt_set), cycled; seeds: one generator per batch, seeded by the batch index.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from eval.features import DomainClassifier
from eval.run import center_crop
from teachers.mini_sd import PAD, prompt_set
from teachers.zoo import resolve_model_path, zoo_path

OUT = Path(__file__).resolve().parent / "teacher_check.json"


def prompt_accuracy(pipe, classifier, scale: float, num_images: int, batch_size: int, steps: int) -> tuple[float, float]:
    prompts, digits = prompt_set()
    correct, seconds = 0, 0.0
    for b, start in enumerate(range(0, num_images, batch_size)):
        idx = [(start + i) % len(prompts) for i in range(min(batch_size, num_images - start))]
        t0 = time.perf_counter()
        images = pipe([prompts[i] for i in idx], num_inference_steps=steps, guidance_scale=scale, output_type="pt",
                      generator=torch.Generator().manual_seed(b)).images
        seconds += time.perf_counter() - t0
        x = center_crop(images * 2 - 1, 28 if images.shape[-1] == 28 + 2 * PAD else None)
        with torch.no_grad():
            predicted = classifier.logits(x).argmax(1)
        correct += int((predicted == torch.tensor([digits[i] for i in idx])).sum())
    return correct / num_images, seconds / num_images


def arguments(teacher: str, steps: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=teacher)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    return parser.parse_args()


def check_scales(call, scheduler: str, args: argparse.Namespace, out: Path) -> None:
    """Prompt accuracy and seconds per image of a pipeline call at each guidance scale; printed and written to out."""
    classifier = DomainClassifier.from_pretrained(zoo_path("mnist_classifier"), use_safetensors=True).eval()
    rows = {}
    for scale in args.scales:
        acc, sec = prompt_accuracy(call, classifier, scale, args.num_images, args.batch_size, args.steps)
        rows[str(scale)] = {"prompt_accuracy": acc, "seconds_per_image": sec}
        print(f"guidance {scale:4}: prompt accuracy {acc:.3f}, {sec * 1000:.1f} ms/image ({args.steps}-step {scheduler})")
    out.write_text(json.dumps({"teacher": args.teacher, "num_images": args.num_images, "steps": args.steps, "scheduler": scheduler,
                               "torch_threads": torch.get_num_threads(), "by_guidance_scale": rows}, indent=2) + "\n")


def main() -> None:
    args = arguments("zoo:mnist_sd", 50)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_path(args.teacher))
    pipe.set_progress_bar_config(disable=True)
    check_scales(pipe, type(pipe.scheduler).__name__, args, OUT)

if __name__ == "__main__":
    main()
