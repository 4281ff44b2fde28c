"""CLIP score (Hessel et al. 2021) of images against their prompts, with CLIP weights from a local folder
(eval.clip_model_path: a transformers CLIPModel + CLIPProcessor save_pretrained folder, e.g. a download of
openai/clip-vit-large-patch14); nothing is fetched at run time.

Computed as torchmetrics' CLIPScore defines it (100 x the cosine of CLIP's projected image and text embeddings, floored
at 0, averaged), from CLIPModel's own forward: torchmetrics 1.9's CLIPScore fails with transformers 5
(`get_image_features` now returns an output object: AttributeError 'BaseModelOutputWithPooling' has no 'norm')."""
from __future__ import annotations

from pathlib import Path

import torch

from teachers.errors import ConfigError


def load_clip(path: str | Path):
    """(CLIPModel, CLIPProcessor) of a local folder; a clear error naming the missing file otherwise."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(path)
    needed = {"config.json": ("config.json",), "preprocessor_config.json": ("preprocessor_config.json", "processor_config.json")}
    for name, alternatives in needed.items():
        if not any((path / a).is_file() for a in alternatives):
            raise ConfigError(f"eval.clip_model_path={path}: {path / name} is missing; give a folder made by "
                              "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained (e.g. openai/clip-vit-large-patch14)")
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def clip_score(images: torch.Tensor, prompts: list[str], path: str | Path, batch_size: int = 256) -> float:
    """Mean CLIP score (100 x cosine, floored at 0) of images NCHW in [-1, 1] (grey images as RGB) and their prompts."""
    return float(clip_pair_scores(images, prompts, *load_clip(path), batch_size).clamp(min=0).mean())


@torch.no_grad()
def clip_pair_scores(images: torch.Tensor, prompts: list[str], model, processor, batch_size: int = 256) -> torch.Tensor:
    """100 x cosine of each image's and its prompt's CLIP embeddings, (N,), not floored."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if pixels.shape[1] == 1:
        pixels = pixels.repeat(1, 3, 1, 1)
    scores = []
    for start in range(0, len(pixels), batch_size):
        batch = processor(text=list(prompts[start : start + batch_size]), images=list(pixels[start : start + batch_size]),
                          return_tensors="pt", padding=True, truncation=True)
        out = model(**batch)  # image_embeds and text_embeds come projected and L2-normalised
        scores.append(100 * (out.image_embeds * out.text_embeds).sum(-1))
    return torch.cat(scores)
