"""What a family's folder must hold, checked from its files alone: no torch, no weights read. The entry points run
these before their heavy imports (issue 38); each family's module names its check as `check_folder`, and
teachers.families.Family.check_folder calls it from here."""
from __future__ import annotations

import json
from pathlib import Path

from teachers.errors import ConfigError
from teachers.families import read_json

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
PICKLE_FILE = "diffusion_pytorch_model.bin"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what a VP network may predict (teachers.vp)
COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")  # what a Stable Diffusion pipeline folder holds
# Schedulers whose config is a DDPM beta schedule (their alphas_cumprod is the training schedule's).
DISCRETE_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "UniPCMultistepScheduler", "LCMScheduler", "KDPM2DiscreteScheduler", "DEISMultistepScheduler", "TCDScheduler",
)
DIT_COMPONENTS = ("transformer", "vae", "scheduler")
SDXL_COMPONENTS = COMPONENTS + ("tokenizer_2", "text_encoder_2")
FLOW_COMPONENTS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")  # SD3, Flux
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)  # rectified-flow schedulers the flow adapter reads (teachers.flow)
TIME_EMBEDDING = "text_time"  # SDXL's addition_embed_type: pooled text embedding + size/crop time ids


FOLDER_HINTS = {  # what to do about a bad model folder
    "teacher": "train one with `python -m teachers.train`, convert an NVlabs EDM pickle with `distill-convert`, or set "
               "teacher.path=null to train it inside the run",
    "student": "give the student/ folder that `python -m distill` exports into its run dir",
}


def check_model_folder(path: Path, key: str = "teacher.path", pipeline: bool = False) -> None:
    """A model folder has config.json and its weights (safetensors, or a tensors-only .bin); a pipeline's are in unet/,
    beside scheduler/. key names the setting that gave the path (an exported student has the same layout)."""
    model_dir = path / "unet" if pipeline else path
    has_weights = (model_dir / SAFETENSORS_FILE).is_file() or (model_dir / PICKLE_FILE).is_file()
    expected = ((CONFIG_FILE, (model_dir / CONFIG_FILE).is_file()), (SAFETENSORS_FILE, has_weights))
    if pipeline:
        expected += (("scheduler/scheduler_config.json", (path / "scheduler" / "scheduler_config.json").is_file()),)
    missing = [str((model_dir / f).relative_to(path)) if "/" not in f else f for f, ok in expected if not ok]
    if missing:
        what = "student" if "student" in key.lower() else "teacher"
        raise ConfigError(f"{key}={path} is not a {what} folder (missing {', '.join(missing)}); {FOLDER_HINTS[what]}")
    read_model_config(model_dir)


def read_model_config(path: Path) -> dict:
    """config.json of a model folder, with a clear error when it is not valid json."""
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{Path(path) / CONFIG_FILE} is not a readable model config: {err}") from None


def check_components(path: Path, key: str, components: tuple[str, ...], what: str) -> None:
    """A diffusers pipeline folder (model_index.json) with every component folder, each missing one named."""
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{key}={path} is not a diffusers pipeline folder (no model_index.json)")
    missing = [name for name in components if not (path / name).is_dir()]
    if missing:
        raise ConfigError(f"{key}={path} is missing the pipeline component(s) {', '.join(missing)}; a {what} "
                          f"folder has {', '.join(components)}")


def check_pipeline_folder(path: Path, key: str = "teacher.path", components: tuple[str, ...] = COMPONENTS,
                          addition_embed_type: str | None = None, what: str = "Stable Diffusion") -> None:
    """Every component a Stable Diffusion folder needs is there (each missing one named); a scheduler the adapter does
    not know, and a UNet whose extra conditioning (addition_embed_type) is not the family's, are refused before any
    work."""
    path = Path(path)
    check_components(path, key, components, what)
    scheduler = check_scheduler(path, key)
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ConfigError(f"{key}={path}: scheduler prediction_type={prediction}; allowed: {', '.join(PREDICTION_TYPES)}")
    unet = read_json(path / "unet" / "config.json", "UNet config")
    if unet.get("addition_embed_type") != addition_embed_type:
        raise ConfigError(f"{key}={path}: the UNet's addition_embed_type={unet.get('addition_embed_type')} is not the "
                          f"{what} family's ({addition_embed_type}): it needs conditioning this adapter does not supply")


def check_scheduler(path: Path, key: str, unnamed: str | None = None) -> dict:
    """The pipeline's scheduler config names a scheduler with a DDPM beta schedule the adapter reads; `unnamed` is the
    class taken when the config names none (DiT folders: DDPMScheduler, as teachers.latent.load_scheduler reads them;
    a Stable Diffusion folder without a class is refused)."""
    scheduler = read_json(Path(path) / "scheduler" / "scheduler_config.json", "scheduler config")
    name = scheduler.get("_class_name", unnamed)
    if name not in DISCRETE_SCHEDULERS:
        raise ConfigError(f"{key}={path}: scheduler {name} is not one the adapter knows (it reads a DDPM beta schedule); "
                          f"known: {', '.join(DISCRETE_SCHEDULERS)}")
    return scheduler


def check_unet_folder(folder: Path, key: str = "teacher.path") -> None:
    """A DDPMPipeline folder: unet/ (config and weights) and the scheduler config are there."""
    check_model_folder(folder, key, pipeline=True)


def check_dit_folder(path: Path, key: str = "teacher.path") -> None:
    """Every component a DiTPipeline folder needs (a missing one named), a known scheduler."""
    missing = [name for name in DIT_COMPONENTS if not (Path(path) / name).is_dir()]
    if missing:
        raise ConfigError(f"{key}={path} is missing the pipeline component(s) {', '.join(missing)}; a DiT folder has {', '.join(DIT_COMPONENTS)}")
    check_scheduler(path, key, unnamed="DDPMScheduler")


def check_sdxl_folder(path: Path, key: str = "teacher.path") -> None:
    """An SDXL folder: both text encoders and tokenizers, and a UNet that takes `text_time` conditioning."""
    check_pipeline_folder(path, key, SDXL_COMPONENTS, TIME_EMBEDDING, what="Stable Diffusion XL")


def check_flow_folder(path: Path, key: str, components: tuple[str, ...], what: str) -> dict:
    """A flow-matching pipeline folder: every component (each missing one named) and a flow-matching scheduler; a
    DDPM-style scheduler (a beta schedule: sigmas a flow network was not trained on) is refused. Its model_index."""
    path = Path(path)
    check_components(path, key, components, what)
    scheduler = read_json(path / "scheduler" / "scheduler_config.json", "scheduler config")
    if scheduler.get("_class_name") not in FLOW_SCHEDULERS:
        raise ConfigError(f"{key}={path}: scheduler {scheduler.get('_class_name')} is not a flow-matching scheduler; a {what} "
                          f"teacher was trained with rectified flow and needs {', '.join(FLOW_SCHEDULERS)}")
    return read_json(path / "model_index.json", "pipeline index")


def check_sd3_folder(path: Path, key: str = "teacher.path") -> None:
    """A StableDiffusion3Pipeline folder: the transformer, VAE, both CLIP encoders and tokenizers, a flow scheduler;
    the T5 encoder is optional (the pipeline pads with zeros without it) but then both or neither of its parts."""
    index = check_flow_folder(path, key, FLOW_COMPONENTS, "Stable Diffusion 3")
    t5 = [name for name in ("text_encoder_3", "tokenizer_3") if (index.get(name) or [None])[0] is not None]
    if len(t5) == 1:
        raise ConfigError(f"{key}={path}: model_index.json names {t5[0]} but not its pair; give both text_encoder_3 and "
                          "tokenizer_3 (T5), or neither")


def check_flux_folder(path: Path, key: str = "teacher.path") -> None:
    """A FluxPipeline folder: transformer, VAE, CLIP (pooled) and T5 encoders and tokenizers, a flow scheduler; a
    Flux network needs T5's embeddings (its context is T5's), so a folder without T5 is refused."""
    path = Path(path)
    index = read_json(path / "model_index.json", "pipeline index") if (path / "model_index.json").is_file() else {}
    if index and (index.get("text_encoder_2") or [None])[0] is None:
        raise ConfigError(f"{key}={path}: a Flux transformer reads T5 embeddings, but model_index.json has no text_encoder_2 "
                          "(T5EncoderModel); give the folder its T5 encoder and tokenizer_2")
    check_flow_folder(path, key, FLOW_COMPONENTS, "Flux")


def check_flux_guidance(path: Path, scale: float, key: str = "loss.guidance_scale") -> None:
    """A guidance-distilled Flux (its transformer's guidance_embeds) takes its guidance as an embedding: CFG refused."""
    transformer = read_json(Path(path) / "transformer" / "config.json", "transformer config")
    refuse_cfg_on_guidance_embedding(bool(transformer.get("guidance_embeds")), scale, key)


def refuse_cfg_on_guidance_embedding(guidance_distilled: bool, scale: float, key: str = "loss.guidance_scale") -> None:
    """CFG (scale != 1) on a Flux that takes its guidance as an embedding is refused: at validation from its config,
    and when a hub id's teacher loads (teachers.flux)."""
    if guidance_distilled and scale != 1:
        raise ConfigError(f"{key}={scale:g} asks for classifier-free guidance, but this Flux teacher is guidance-distilled "
                          "(guidance_embeds): its guidance is the embedding (`guidance` in its distill.json, default 3.5), and its "
                          "real score is the teacher at that embedding; set loss.guidance_scale=1")


GUIDANCE_CHECKS = {"flux": check_flux_guidance}  # family name -> its check of loss.guidance_scale (teachers.families)

FOLDER_CHECKS = {  # family name -> its folder check (teachers.families)
    "mlp": check_model_folder, "edm": check_model_folder, "unet": check_unet_folder, "sd": check_pipeline_folder,
    "dit": check_dit_folder, "sdxl": check_sdxl_folder, "sd3": check_sd3_folder, "flux": check_flux_folder,
}
