"""The family registry and the one loader: `teachers.load(path_or_id)` for folders, `zoo:` names and hub ids alike.

A family is one module of `teachers/` behind the teacher protocol (teachers.base.Teacher). It is detected from the
pipeline class `model_index.json` names (or a model folder's `config.json`), read from the folder, the package's zoo
or the Hugging Face hub (its cache under HF_HUB_OFFLINE=1), and is recorded by the run, so export, eval and serve
load with it instead of guessing.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from teachers.errors import ConfigError
from teachers.zoo import resolve_model_path

INDEX_FILE, CONFIG_FILE = "model_index.json", "config.json"
# What a hub snapshot needs of a pipeline repository: configs, tokenizers and the default-precision safetensors
# (not the single-file checkpoints, .bin or fp16 variants many repositories also hold).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "diffusion_pytorch_model.safetensors", "*/diffusion_pytorch_model.safetensors",
                "*/diffusion_pytorch_model-*.safetensors", "*/model.safetensors", "*/model-*.safetensors"]


@dataclass(frozen=True)
class Family:
    """A model family: how its folders are recognised and loaded. `load(folder, dtype)` takes a local folder."""

    name: str
    pipeline_classes: tuple[str, ...]  # model_index.json `_class_name`s (config.json's for single models)
    module: str  # the teachers module that implements it
    latent: bool = False  # samples are VAE latents (evaluation decodes them)
    supported: bool = True  # False: recognised, refused with `reason`
    reason: str = ""

    def loader(self) -> Callable:
        """load_folder(folder, dtype, key) of the family's module."""
        return self._module().load_folder

    def check_folder(self, folder: Path, key: str) -> None:
        """The family's own check of a local folder (every component there, named when missing), no weights read and
        no torch imported (teachers.folders)."""
        from teachers.folders import FOLDER_CHECKS

        FOLDER_CHECKS[self.name](folder, key)

    def check_guidance(self, path_or_id, scale: float, key: str = "loss.guidance_scale") -> None:
        """The family's own check of loss.guidance_scale against a local folder's configs (a guidance-distilled Flux
        refuses CFG), no weights read; nothing for families without one, or for hub ids (checked when they load)."""
        from teachers.folders import GUIDANCE_CHECKS

        where = resolve(path_or_id)
        if isinstance(where, Path) and self.name in GUIDANCE_CHECKS:
            GUIDANCE_CHECKS[self.name](where, scale, key)

    def _module(self):
        import importlib

        return importlib.import_module(self.module)


FAMILIES = {family.name: family for family in (
    Family("mlp", ("MLPDenoiser",), "teachers.mlp"),
    Family("unet", ("DDPMPipeline",), "teachers.unet"),
    Family("sd", ("StableDiffusionPipeline",), "teachers.latent", latent=True),
    Family("dit", ("DiTPipeline",), "teachers.dit", latent=True),
    Family("sdxl", ("StableDiffusionXLPipeline",), "teachers.sdxl", latent=True),
    Family("edm", ("EDMDenoiser",), "teachers.edm"),
    Family("sd3", ("StableDiffusion3Pipeline",), "teachers.sd3", latent=True),
    Family("flux", ("FluxPipeline",), "teachers.flux", latent=True),
)}


def known_classes() -> str:
    return ", ".join(f"{c} ({f.name})" for f in FAMILIES.values() if f.supported for c in f.pipeline_classes)


def family_of_class(class_name: str | None, where: str) -> Family:
    """The family whose pipeline (or model) class this is; unknown and unsupported ones refused, naming the known."""
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            if not family.supported:
                raise ConfigError(f"{where} is a {class_name}: {family.reason}")
            return family
    raise ConfigError(f"{where} is a {class_name or 'folder without a pipeline class'}, which the toolkit does not know; "
                      f"it knows {known_classes()}")


def is_hub_id(path: str | Path) -> bool:
    """`owner/name` that is not a local path: a hub id."""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


def hub_error(repo_id: str, key: str, err: Exception) -> ConfigError:
    """One line for a hub id that cannot be read: not local, and no network or cache entry for it."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ConfigError(f"{key}={repo_id} is not found locally; as a hub id it needs network, or a filled Hugging Face cache "
                       f"(HF_HOME, with HF_HUB_OFFLINE=1 on machines without network): {type(err).__name__}: {first}")


def hub_file(repo_id: str, filename: str, key: str) -> Path | None:
    """A file of a hub repository (from the cache under HF_HUB_OFFLINE); None when the repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:  # offline (or unreachable) and not in the cache: maybe absent, maybe not fetched
        return None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError as err:
        raise ConfigError(f"{key}={repo_id}: no such hub repository (or it is private and no token is set): {type(err).__name__}") from None
    except (OSError, ValueError) as err:  # connection errors are OSErrors
        raise hub_error(repo_id, key, err) from None


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable {what}: {err}") from None


def folder_class(folder: Path) -> str | None:
    """The pipeline class of a local folder (model_index.json), else its model class (config.json); a legacy
    pipeline folder with unet/ but no index is a DDPMPipeline."""
    if (folder / INDEX_FILE).is_file():
        return read_json(folder / INDEX_FILE, "pipeline index").get("_class_name")
    if (folder / "unet").is_dir():
        return "DDPMPipeline"
    if (folder / CONFIG_FILE).is_file():
        return read_json(folder / CONFIG_FILE, "model config").get("_class_name")
    return None


def hub_class(repo_id: str, key: str) -> str | None:
    """The pipeline (or model) class of a hub repository, from its model_index.json (or config.json) alone."""
    for name in (INDEX_FILE, CONFIG_FILE):
        path = hub_file(repo_id, name, key)
        if path is not None:
            return read_json(path, name).get("_class_name")
    raise hub_error(repo_id, key, FileNotFoundError(f"neither {INDEX_FILE} nor {CONFIG_FILE} could be read"))


def resolve(path_or_id, key: str = "teacher.path") -> str | Path:
    """A zoo name as its folder, a local folder as a Path, a hub id as it is; a missing local path is refused (it is
    never taken silently for a hub id)."""
    resolved = resolve_model_path(str(path_or_id))
    if isinstance(resolved, Path) or Path(str(resolved)).exists():
        folder = Path(resolved)
        if not folder.is_dir():
            raise ConfigError(f"{key}={path_or_id} is a file, not a model folder")
        return folder
    if is_hub_id(resolved):
        return str(resolved)
    from teachers.folders import FOLDER_HINTS

    hint = FOLDER_HINTS["student" if "student" in key.lower() else "teacher"]
    raise ConfigError(f"{key}={path_or_id}: no such folder (a hub id is owner/name; a shipped model is zoo:<name>); {hint}")


def detect(path_or_id, key: str = "teacher.path") -> Family:
    """The family of a folder, zoo name or hub id, read from its index or config alone (no weights)."""
    where = resolve(path_or_id, key)
    if isinstance(where, Path):
        found = folder_class(where)
        if found is None:  # neither a pipeline nor a model folder: say what a model folder holds
            from teachers.folders import check_model_folder

            check_model_folder(where, key)
        return family_of_class(found, f"{key}={path_or_id}")
    return family_of_class(hub_class(where, key), f"{key}={path_or_id}")


FLOW_FAMILIES = ("sd3", "flux")  # rectified flow (teachers.flow): sigma_max is inf (t = 1)
MODEL_FOLDER_FAMILIES = ("mlp", "edm")  # one model folder (config.json + weights), no pipeline or scheduler
GROUP_FAMILIES = {"mlp": ("mlp",), "unet": ("unet",), "sd": ("sd", "sdxl", "sd3", "flux"), "dit": ("dit",), "edm": ("edm",)}  # teacher=<group> takes


def expect_family(path_or_id, group: str, key: str = "teacher.path") -> Family:
    """The detected family of teacher.path, which the config group teacher=<group> must take."""
    family = detect(path_or_id, key)
    if family.name not in GROUP_FAMILIES.get(group, (group,)):
        fits = next((g for g, names in GROUP_FAMILIES.items() if family.name in names), family.name)
        raise ConfigError(f"{key}={path_or_id} is a {family.name} teacher ({', '.join(family.pipeline_classes)}), not one "
                          f"teacher={group} takes; use teacher={fits}")
    where = resolve(path_or_id, key)
    if isinstance(where, Path):  # a hub id's files are checked when its snapshot loads
        family.check_folder(where, key)
    return family


def local_folder(path_or_id, key: str = "teacher.path") -> Path:
    """A local folder of the model: as given, the zoo's, or the hub snapshot (downloaded, or the cache's offline)."""
    where = resolve(path_or_id, key)
    if isinstance(where, Path):
        return where
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(where, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001  (hub, connection and cache errors all mean: cannot be had here)
        raise hub_error(where, key, err) from None


def load(path_or_id, dtype: str | None = None, key: str = "teacher.path", family: str | None = None):
    """The model as a frozen EDM denoiser of its family (teacher or exported student). family: the recorded one (a
    run's teacher.family, a student's student.json); None: detected. dtype (teacher.dtype): the frozen parts'
    precision where the family has any to set."""
    found = detect(path_or_id, key) if family is None else FAMILIES.get(family)
    if found is None:
        raise ConfigError(f"family={family} is not one the toolkit knows; known: {', '.join(FAMILIES)}")
    folder = local_folder(path_or_id, key)
    try:
        model = found.loader()(folder, dtype=dtype, key=key)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (diffusers, transformers and safetensors raise many kinds; all mean "unreadable")
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"cannot load the {found.name} model in {folder}: {type(err).__name__}: {message}") from None
    return model.eval().requires_grad_(False)


def sigma_range(path_or_id, family: Family, key: str = "teacher.path", vp_tables: bool = True) -> tuple[float, float] | None:
    """(sigma_min, sigma_max) of a teacher of a detected family from its configs alone (no weights); None where they
    do not say. vp_tables=False: a DDPM table's range in float64 without torch (teachers.checks.ddpm_sigma_range), for
    checks before the heavy imports; None where only diffusers can compute it."""
    where = resolve(path_or_id, key)
    read = (lambda name: where / name if (where / name).is_file() else None) if isinstance(where, Path) else (lambda name: hub_file(where, name, key))
    if family.name in MODEL_FOLDER_FAMILIES:  # the range is in the model's own config.json
        config = read_json(read(CONFIG_FILE), "model config")
        return float(config.get("sigma_min", 0.002)), float(config.get("sigma_max", 80.0))
    scheduler = read("scheduler/scheduler_config.json")
    if scheduler is None:
        return None
    from teachers.checks import ddpm_sigma_range, flow_sigma_range

    if family.name in FLOW_FAMILIES:
        return flow_sigma_range(read_json(scheduler, "scheduler config"))
    extra_path = read("distill.json")
    vp_range = vp_table_range if vp_tables else ddpm_sigma_range
    return vp_range(read_json(scheduler, "scheduler config"), read_json(extra_path, "distill.json") if extra_path else {})


def vp_table_range(scheduler: dict, extra: dict) -> tuple[float, float]:
    """teachers.vp.sigma_range: the float32 DDPM table the adapter runs on (imports torch and diffusers)."""
    from teachers.vp import sigma_range

    return sigma_range(scheduler, extra)
