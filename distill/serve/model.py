"""The preview model: images from (seed, label or prompt) requests, each image a function of its own seed and label
(or prompt) only."""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from distill.serve.source import LoadedStudent
from eval.samplers import multistep_student, one_step

PROMPT_CACHE = 1024  # text embeddings kept per served student


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """z (N, *shape) ~ N(0, I), row i drawn on the CPU from its own generator seeded with seeds[i] (so a row does not
    depend on what it was batched with), and the generators, for a k-step student's fresh noise."""
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]), generators


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW float in [-1, 1] -> NHWC uint8."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> one (rows*H, cols*W, C) sheet, ceil(sqrt(N)) columns, left to right then down."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        sheet[r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    return sheet


def encode_png(sheet: np.ndarray) -> bytes:
    """A PNG of an HWC uint8 image (grey for one channel); low compression, since the page needs it now."""
    image = Image.fromarray(sheet[..., 0] if sheet.shape[-1] == 1 else sheet)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class PreviewModel:
    """A loaded student on a device; generate() is called from the one worker thread that owns it."""

    def __init__(self, student: LoadedStudent, device: str | torch.device = "cpu", compile: bool = False):
        self.student = student
        self.device = torch.device(device)
        self.denoiser = student.denoiser.to(self.device)
        self.sigmas = torch.tensor(student.sigmas, dtype=torch.float32, device=self.device)
        # torch.compile wraps the call only; shape, num_classes and the weights stay on the plain module
        self.forward = torch.compile(self.denoiser, dynamic=True) if compile else self.denoiser

    def warm_up(self, max_batch: int) -> None:
        """One batch of 1 and one of max_batch, so the first user pays for no allocation or compilation."""
        for n in sorted({1, max_batch}):
            self.generate(list(range(n)), self.labels_of([self.request_condition(seed) for seed in range(n)]))

    def request_condition(self, seed: int) -> dict:
        """A request's condition fields for a seed (benchmarks and warm-up): a class label cycled by seed, the empty
        prompt for a text student, nothing for an unconditional one."""
        if self.text_to_image:
            return {"prompt": ""}
        return {} if self.num_classes is None else {"label": seed % self.num_classes}

    def labels_of(self, requests: list[dict]) -> list | None:
        """generate()'s labels (or prompts) of requests' condition fields; None for an unconditional student."""
        key = "prompt" if self.text_to_image else "label"
        return None if not self.text_to_image and self.num_classes is None else [request[key] for request in requests]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.denoiser.shape)

    @property
    def num_classes(self) -> int | None:
        return self.denoiser.num_classes

    @property
    def text_to_image(self) -> bool:
        return self.denoiser.text_conditional

    @property
    def nfe(self) -> int:
        return len(self.student.sigmas)

    def prompt_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Each prompt's text embedding, encoded alone (so it does not depend on the batch) and kept for reuse."""
        cache = self.__dict__.setdefault("_embeddings", {})
        for prompt in dict.fromkeys(prompts):
            if prompt not in cache:
                if len(cache) >= PROMPT_CACHE:
                    cache.clear()
                cache[prompt] = self.denoiser.encode_condition([prompt])[0]
        return torch.stack([cache[p] for p in prompts]).to(self.device)

    @torch.no_grad()
    def generate(self, seeds: list[int], labels: list | None) -> np.ndarray:
        """NHWC uint8 images, one per seed (and label, or prompt for a text-to-image student, whose latents its VAE
        decodes); one forward per student step for the whole batch."""
        z, generators = seeded_noise(seeds, self.shape)
        z = z.to(self.device)
        if self.text_to_image:
            cond = self.prompt_embeddings([str(p) for p in labels])
        else:
            cond = None if labels is None else torch.tensor(labels, dtype=torch.long, device=self.device)
        if self.nfe == 1:
            x = one_step(self.forward, z, self.sigmas, cond)
        else:  # DMD2's k-step sampler, its fresh noise drawn per image from the image's own generator
            noise_like = lambda x0: seeded_draw(generators, x0)  # noqa: E731
            x = multistep_student(self.forward, z, self.sigmas, cond, noise_like=noise_like)
        return to_uint8(self.denoiser.decode(x))


def seeded_draw(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """N(0, I) like `like`, row i from generators[i] on the CPU."""
    rows = [torch.randn(like.shape[1:], generator=g) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)
