"""What differs between toy mixtures and images: the teacher's set-up, progress sheets, and evaluation."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torchvision.utils import make_grid, save_image

from eval.plots import scatter_panels
from eval.run import evaluate_models
from eval.shard import Shard
from teachers.conditions import Conditions, conditions_for, text_conditions
from teachers.data import check_fits, has_captions, load_captioned_images, load_images
from teachers.errors import ConfigError
from teachers.gmm import GaussianMixture, GMMDenoiser
import teachers
from teachers.io import save_pretrained_atomic
from teachers.fit import train_image_teacher, train_teacher
from teachers.zoo import resolve_model_path

PLOT_SAMPLES = {"toy": 2000, "image": 64}
REAL_TOY_SAMPLES = 10_000  # mixture draws that stand for the data set in the toy GAN


def log_image(accelerator: Accelerator, path: Path, step: int) -> None:
    """A PNG sheet to tensorboard as well."""
    tracker = accelerator.get_tracker("tensorboard")
    tracker.log_images({"student_samples": matplotlib.image.imread(path)[..., :3]}, step=step, dataformats="HWC")


def save_sheet(accelerator: Accelerator, x: torch.Tensor, path: Path, step: int) -> None:
    """An 8-wide sheet of images NCHW in [-1, 1] to a PNG and tensorboard, by the main process (every process samples a
    sharded (FSDP) student's sheet; one writes it)."""
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(make_grid((x + 1) / 2, nrow=8, pad_value=1.0), path)
        log_image(accelerator, path, step)


def plot_generator(z: torch.Tensor) -> torch.Generator:
    """Fixed re-noising for multi-step students' progress sheets, apart from the training RNG."""
    return torch.Generator(device=z.device).manual_seed(0)


def teacher_path(cfg: DictConfig, run_dir: Path) -> Path | str:
    """teacher.path as given (a folder, `zoo:<name>`, or a hub id), or <run dir>/teacher when null."""
    return run_dir / "teacher" if cfg.teacher.path is None else resolve_model_path(cfg.teacher.path)


def setup_teacher(cfg: DictConfig, run_dir: Path, accelerator: Accelerator, train_fn):
    """Load the teacher, training it into the run dir first when teacher.path is null."""
    path = teacher_path(cfg, run_dir)
    if cfg.teacher.path is None and not Path(path).exists() and accelerator.is_main_process:
        save_pretrained_atomic(train_fn(), path)
    accelerator.wait_for_everyone()
    return teachers.load(path, dtype=cfg.teacher.get("dtype"), family=cfg.teacher.get("family")).to(accelerator.device)


def no_captions_message(data_cfg) -> str:
    """Why a text teacher's GAN has no real side here, and the ways to give it one."""
    return (f"the GAN's real side of a text-to-image teacher needs captioned images, and data={data_cfg.name} has none: put a "
            f"metadata.jsonl beside the images of data.path (one {{\"file_name\": ..., \"text\": caption}} a line, datasets' "
            "imagefolder format), give a hub dataset with data.caption_key, or use data=mnist_sd; or set "
            "leave the GAN terms out (loss.student.gan_generator=null loss.fake.gan_discriminator=null, or loss=dmd)")


class ToyTask:
    """Gaussian-mixture data: the MLP teacher (or the exact denoiser), scatter sheets, toy metrics."""

    kind = "toy"

    def __init__(self, mixture: GaussianMixture):
        self.mixture = mixture

    def setup_teacher(self, cfg, run_dir, accelerator):
        teacher = setup_teacher(cfg, run_dir, accelerator, lambda: train_teacher(self.mixture, cfg.teacher, seed=cfg.seed))
        return teacher, (GMMDenoiser(self.mixture) if cfg.teacher.real == "analytic" else teacher)

    def plot(self, generator, z_plot, cond_plot, path: Path, accelerator: Accelerator, step: int) -> None:
        """Scatter sheet of data and student samples from fixed noise."""
        with torch.no_grad():
            x = generator.sample(z_plot, None, plot_generator(z_plot)).float().cpu().numpy()
        if accelerator.is_main_process:  # every process samples a sharded (FSDP) student; one writes
            ref = self.mixture.sample(len(z_plot), generator=torch.Generator().manual_seed(0)).numpy()
            scatter_panels({"data": ref, f"student, step {step}": x}, path, ref)
            log_image(accelerator, path, step)

    def evaluate(self, cfg, student, real, run_dir: Path, device, shard: Shard = Shard()) -> dict:
        return evaluate_models(cfg, real, student, run_dir, device, mixture=self.mixture, shard=shard)

    def conditions(self, cfg, teacher, part: str):
        return None

    def real_data(self, cfg, teacher, device, conditions=None) -> tuple[tuple[torch.Tensor], None]:
        """(samples,) of the mixture for the GAN's real side (REAL_TOY_SAMPLES, fixed seed); no condition table."""
        x = self.mixture.sample(REAL_TOY_SAMPLES, generator=torch.Generator().manual_seed(cfg.seed))
        return (x.to(device),), None


class ImageTask:
    """Image data: a diffusers UNet teacher, sample sheets, FID vs the data and the teacher's full sampler."""

    kind = "image"

    def __init__(self, data_cfg: DictConfig):
        self.data_cfg = data_cfg

    def setup_teacher(self, cfg, run_dir, accelerator):
        teacher = setup_teacher(cfg, run_dir, accelerator, lambda: train_image_teacher(self.data_cfg, cfg.teacher, seed=cfg.seed))
        images, _ = load_images(self.data_cfg, "test")
        check_fits(images, teacher.shape, f"data={self.data_cfg.name}")
        return teacher, teacher

    def plot(self, generator, z_plot, cond_plot, path: Path, accelerator: Accelerator, step: int) -> None:
        """An 8x8 sheet of student samples from fixed noise (and labels)."""
        with torch.no_grad():
            x = generator.sample(z_plot, cond_plot, plot_generator(z_plot)).float().cpu()
        save_sheet(accelerator, x.clamp(-1, 1), path, step)

    def evaluate(self, cfg, student, real, run_dir: Path, device, shard: Shard = Shard()) -> dict:
        """FID beside the teacher's full sampler; each process of the shard samples its share of the seeds."""
        return evaluate_models(cfg, real, student, run_dir, device, shard=shard)

    def conditions(self, cfg, teacher, part: str):
        """The condition table (class labels, or a prompt set's embeddings) the run draws conds from; None: unconditional."""
        return conditions_for(teacher, self.data_cfg, part, cfg.eval.cache_dir)

    def real_data(self, cfg, teacher, device, conditions=None) -> tuple[tuple[torch.Tensor, ...], Conditions | None]:
        """((images[, labels]), the table the labels index) of the training split for the GAN's real side: labels,
        rows of the run's class table, for class-conditional teachers."""
        images, labels = load_images(self.data_cfg, "train")
        return ((images.to(device), labels.to(device)), conditions) if teacher.num_classes else ((images.to(device),), None)


class LatentTask(ImageTask):
    """A latent teacher (Stable Diffusion family with prompts, DiT with class labels): sheets, evaluation and the GAN's
    real side go through its VAE. Only this task and eval's decode know the denoiser works on latents."""

    kind = "image"

    def setup_teacher(self, cfg, run_dir, accelerator):
        teacher = setup_teacher(cfg, run_dir, accelerator, None)
        if cfg.teacher.get("preview_vae"):  # TAESD for the progress sheets; the student copies share it
            from diffusers import AutoencoderTiny

            teacher.set_preview_vae(AutoencoderTiny.from_pretrained(resolve_model_path(cfg.teacher.preview_vae)).to(accelerator.device))
        return teacher, teacher

    def plot(self, generator, z_plot, cond_plot, path: Path, accelerator: Accelerator, step: int) -> None:
        """An 8x8 sheet of decoded student samples from fixed noise and the first prompts."""
        with torch.no_grad():
            x = generator.denoiser.preview(generator.sample(z_plot, cond_plot, plot_generator(z_plot))).float().cpu()
        save_sheet(accelerator, x, path, step)

    def real_data(self, cfg, teacher, device, conditions=None) -> tuple[tuple[torch.Tensor, ...], Conditions | None]:
        """((latents[, rows]), the table the rows index) for the GAN's real side: the training images through the VAE
        (padded as the teacher's VAE was trained, data.pad), each with its condition row: its class label in the run's
        class table (DiT); for a text teacher, its own caption in a table of the images' captions (a folder's
        metadata.jsonl, a hub dataset's data.caption_key), else a prompt of the run's prompt set that names its class
        (data=mnist_sd). Rows, not embeddings: the loop looks up a batch's conds, so the tables stay in CPU memory.
        conditions: the run's condition table (self.conditions(cfg, teacher, "train"), made once)."""
        text = conditions is not None and conditions.prompts is not None
        classes_named = text and conditions.classes is not None and bool((conditions.classes >= 0).any())
        if text and not classes_named and has_captions(self.data_cfg) is False:
            raise ConfigError(no_captions_message(self.data_cfg))
        images, labels, captions = load_captioned_images(self.data_cfg, "train")
        latents = self.latents(teacher, images, device, cfg.seed)
        if not text:  # unconditional or class-conditional (DiT)
            return ((latents, labels.to(device)), conditions) if conditions is not None else ((latents,), None)
        if captions is not None:
            table = text_conditions(teacher, captions, None, cfg.eval.cache_dir)
            return (latents, torch.arange(len(latents), device=device)), table
        if not classes_named:
            raise ConfigError(no_captions_message(self.data_cfg))
        gen, classes = torch.Generator().manual_seed(cfg.seed), conditions.classes.cpu()
        rows = [(classes == int(y)).nonzero().flatten() for y in labels]
        if any(len(r) == 0 for r in rows):
            raise ConfigError(f"data.prompts names no prompt for some classes of data {self.data_cfg.name}")
        picked = torch.stack([r[torch.randint(len(r), (1,), generator=gen)][0] for r in rows])
        return (latents, picked.to(device)), conditions

    def latents(self, teacher, images: torch.Tensor, device, seed: int) -> torch.Tensor:
        """Training images (padded by data.pad as the teacher's VAE was trained) through the VAE's encoder."""
        pad = int(self.data_cfg.get("pad", 0))
        images = torch.nn.functional.pad(images, (pad,) * 4, value=-1.0) if pad else images
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([teacher.encode(x.to(device), gen if device == torch.device("cpu") else None) for x in images.split(500)])
