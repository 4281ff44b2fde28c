"""What makes an exported student usable without this toolkit: the scheduler set for its own step(s), a sample
grid beside its teacher, and a Hugging Face model card (README.md) whose snippet makes the student's own image."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import make_grid, save_image

from eval.harness import teacher_sample_fns
from eval.samplers import multistep_student
from teachers.guidance import GuidedDenoiser

CARD_FILE, GRID_FILE, CONFIG_FILE = "README.md", "samples.png", "train_config.yaml"
GRID_SEEDS = 8
TEACHER_SAMPLER = {"name": "heun", "num_steps": 18}  # 35 network evaluations, the teacher's full sampler in eval


def student_images(student, noise: torch.Tensor, sigmas: list[float], cond, generator: torch.Generator) -> torch.Tensor:
    """The student's own sampler, the way the card's snippet draws its noise: z, then each step's fresh noise, from
    one generator. NCHW in [0, 1]."""
    with torch.no_grad():
        x = multistep_student(student, noise, torch.tensor(sigmas, dtype=noise.dtype), cond, generator)
    return (x / 2 + 0.5).clamp(0, 1)


TOOLKIT_SNIPPET = '''import torch
import teachers
from eval.samplers import multistep_student

student = teachers.load(".")  # this folder (needs the onestep-distill package)
generator = torch.Generator().manual_seed(0)
labels = {cond}
x = torch.randn((4, {shape}), generator=generator)
with torch.no_grad():
    x = multistep_student(student, x, torch.tensor({sigmas}), labels, generator)
images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # NHWC in [0, 1]
'''
NOT_EXACT = ("its timesteps fall between the integers of the teacher's table, which stock diffusers schedulers round; "
             "the exact sampler is the toolkit's")


def usage_snippet(denoiser, sigmas: list[float], exact: bool, prompts: list[str] | None = None) -> str:
    """The smallest exact code that makes the student's images; defines `images` (NHWC numpy in [0, 1]): the family's
    stock pipeline where its scheduler hits the student's steps, else the toolkit's own sampler."""
    snippet = denoiser.usage_snippet(sigmas, exact, prompts)
    if snippet is not None:
        return snippet
    classes = denoiser.num_classes
    cond = f"torch.tensor([0, 1, 2, 3])  # classes 0..{classes - 1}" if classes else "None"
    return TOOLKIT_SNIPPET.format(cond=cond, shape=", ".join(map(str, denoiser.shape)), sigmas=[round(s, 6) for s in sigmas])


def snippet_from_card(card: str) -> str:
    """The first ```python block of a model card."""
    match = re.search(r"```python\n(.*?)```", card, re.S)
    if match is None:
        raise ValueError("the model card has no ```python block")
    return match.group(1)


def sample_grid(student, teacher, sigmas: list[float], path: Path, prompts: list[str] | None = None, guidance_scale: float = 1.0) -> None:
    """Two rows on the same seeds (and classes 0..7, or the record's prompts): the teacher's full sampler (with the
    real score's guidance for text-to-image), then the student; latents decoded with the student's VAE."""
    classes = student.num_classes
    cond = torch.arange(GRID_SEEDS) % classes if classes else None
    decode = student.decode
    if student.text_conditional:
        chosen = list(prompts or [""])
        cond = student.encode_condition([chosen[i % len(chosen)] for i in range(GRID_SEEDS)])
    noise = torch.randn((GRID_SEEDS, *student.shape), generator=torch.Generator().manual_seed(0))
    rows = []
    if teacher is not None:
        guided = GuidedDenoiser(teacher, guidance_scale) if guidance_scale != 1 else teacher
        (full_sampler,) = teacher_sample_fns(guided, [TEACHER_SAMPLER]).values()
        with torch.no_grad():
            rows.append((decode(full_sampler.fn(noise, cond)) / 2 + 0.5).clamp(0, 1))
    with torch.no_grad():
        x = multistep_student(student, noise.clone(), torch.tensor(sigmas, dtype=noise.dtype), cond, torch.Generator().manual_seed(1))
    rows.append((decode(x) / 2 + 0.5).clamp(0, 1))
    save_image(make_grid(torch.cat(rows).float(), nrow=GRID_SEEDS, pad_value=1.0), path)


def teacher_license(teacher_folder: Path | None) -> str:
    """The `license:` of the teacher's own model card, else "other" (nothing recorded)."""
    card = teacher_folder / CARD_FILE if teacher_folder is not None else None
    if card is not None and card.is_file():
        match = re.search(r"^license:\s*(\S+)", card.read_text(), re.M)
        if match:
            return match.group(1)
    return "other"


def metrics_table(metrics: dict) -> str:
    """metrics.json as a table: one row per sampler."""
    if not metrics:
        return "Not evaluated yet: `python -m eval student_path=<this folder>` measures it beside its teacher.\n"
    keys = ["nfe", "fid", "fid_vs_teacher", "fid_ci95", "num_samples", "seed"]
    rows = ["| sampler | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, entry in sorted(metrics.items()):
        rows.append(f"| {label} | " + " | ".join(_fmt(entry.get(k)) for k in keys) + " |")
    extractor = next((e.get("feature_extractor") for e in metrics.values() if e.get("feature_extractor")), "?")
    return "\n".join(rows) + f"\n\nFeatures: `{extractor}`; FID against the training images (`fid`) and against the teacher's own samples (`fid_vs_teacher`) on the same seeds, with a 95% bootstrap interval (`fid_ci95`).\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "" if value is None else str(value)


def model_card(denoiser, record: dict, config: dict | None, metrics: dict, license_id: str, source: str) -> str:
    """README.md of an exported student: metadata, the grid, the exact snippet, the figures, the training config."""
    sigmas = record["sigmas"]
    scheduler, timesteps, exact = denoiser.export_scheduler(sigmas)
    k, teacher = len(sigmas), record.get("teacher") or "trained in the run"
    classes = denoiser.num_classes
    tag, how = denoiser.card_facts()
    how = how if exact or scheduler is None else NOT_EXACT
    front = {"pipeline_tag": tag, "base_model": teacher, "license": license_id,
             "tags": ["diffusion-distillation", "dmd", "onestep-distill", f"{k}-step"]}
    if scheduler is not None:  # a diffusers pipeline folder
        front = {"library_name": "diffusers"} | front
    table = f" (timesteps {[round(t, 3) for t in timesteps]} of the teacher's table)" if timesteps else ""
    step_note = ([f"The step count ({k}) must be the student's own: the scheduler holds its timesteps, and a larger count "
                  "raises an error instead of running a 1000-step loop.", ""] if scheduler is not None else [])
    lines = ["---", *OmegaConf.to_yaml(OmegaConf.create(front)).strip().splitlines(), "---", "",
             f"# A {k}-step student of `{teacher}`", "",
             f"Distilled with Distribution Matching Distillation (DMD/DMD2) by onestep-distill from {source}. It makes an image in "
             f"{k} network evaluation{'s' if k > 1 else ''} at the noise levels sigma = {[round(s, 4) for s in sigmas]} "
             f"{table}{f', class-conditional (classes 0..{classes - 1})' if classes else ''}; "
             f"{how}.", "", f"![teacher (top, Heun, 35 evaluations) and this student (bottom), same seeds]({GRID_FILE})", "",
             "## Usage", "", "Run in this folder (or replace `\".\"` with its hub id). It makes the same images as the toolkit's own sampler for the same seed"
             + (" and classes" if classes else "") + " (tested to 1e-3 on [0, 1] pixels).", "",
             f"```python\n{usage_snippet(denoiser, sigmas, exact, record.get('prompts'))}```", "", *step_note,
             "## Evaluation", "", metrics_table(metrics), "## Training", "",
             f"Real score's guidance scale {record.get('guidance_scale', 1.0)}; the resolved training config is `{CONFIG_FILE}`"
             + (" (below)." if config else " (not recorded)."), ""]
    if config:
        lines += ["```yaml", OmegaConf.to_yaml(OmegaConf.create(config)).rstrip(), "```", ""]
    return "\n".join(lines)


def read_metrics(run_dir: Path | None) -> dict:
    path = run_dir / "metrics.json" if run_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}
