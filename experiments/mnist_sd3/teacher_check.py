"""The shipped miniature SD3 through stock diffusers: prompt accuracy of its own 28-step flow-matching Euler sampler
(the pipeline's FlowMatchEulerDiscreteScheduler) at several guidance scales, judged by the shipped MNIST classifier.

    python experiments/mnist_sd3/teacher_check.py [--teacher zoo:mnist_sd3] [--num-images 1000] [--scales 1 2 3 5]

Writes experiments/mnist_sd3/teacher_check.json and prints a table; the prompts, seeds and judging are
experiments/mnist_sd/teacher_check.py's (every phrasing of every digit, cycled; a generator per batch)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from diffusers import StableDiffusion3Pipeline

from teachers.vp import read_extra
from teachers.zoo import resolve_model_path

HERE = Path(__file__).resolve().parent
OUT = HERE / "teacher_check.json"


def sd_check():
    """experiments/mnist_sd/teacher_check.py as a module (its prompt_accuracy)."""
    spec = importlib.util.spec_from_file_location("sd_teacher_check", HERE.parent / "mnist_sd" / "teacher_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    check = sd_check()
    args = check.arguments("zoo:mnist_sd3", 28)
    folder = Path(resolve_model_path(args.teacher))
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)  # the miniature has no T5
    pipe.set_progress_bar_config(disable=True)
    call = functools.partial(pipe, max_sequence_length=read_extra(folder).get("max_sequence_length", 256))
    check.check_scales(call, type(pipe.scheduler).__name__, args, OUT)

if __name__ == "__main__":
    main()
