"""Export the student: a diffusers folder whose scheduler is set for the student's own step(s), with student.json, a
model card, a sample grid beside the teacher and the training config. `python -m distill.export RUN_OR_CHECKPOINT`
re-exports any sealed checkpoint."""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf

import teachers
from distill.card import CARD_FILE, CONFIG_FILE, GRID_FILE, model_card, read_metrics, sample_grid, teacher_license
from distill.lora import add_lora, fuse_lora, has_lora, lora_state_dict
from distill.checkpoint import COMPLETE_MARKER, CorruptCheckpoint, STEP_DIR, latest_loadable, load_checkpoint
from distill.tasks import teacher_path
from eval.harness import STUDENT_FILE
from teachers.errors import ConfigError
from teachers.io import write_folder_atomic


def student_weights(student, ema: EMAModel | None):
    """A frozen copy of the student with the EMA weights in it when there is an EMA."""
    export = copy.deepcopy(student).eval().requires_grad_(False)
    if ema is not None:
        ema.copy_to(export.parameters())
    return export


def student_record(sigmas: list[float], guidance_scale: float = 1.0, teacher: str | None = None, prompts: list[str] | None = None,
                   family: str | None = None) -> dict:
    """What `python -m eval` needs beside the weights to sample and judge the student as it was trained: its sigma list
    (one entry for one step: its own conditioning sigma), and the real score's CFG scale with the teacher it refers to;
    its model family (later commands load with it); for a text-to-image student, a few of its evaluation prompts (the
    card's grid and snippet)."""
    record = {"sigmas": [float(s) for s in sigmas], "guidance_scale": float(guidance_scale), "teacher": teacher, "family": family}
    return record | ({"prompts": list(prompts)} if prompts else {})


def record_prompts(cfg: DictConfig, count: int = 8) -> list[str] | None:
    """The first evaluation prompts of a text-to-image run (the card's grid and snippet); None for other runs."""
    if cfg.get("data") is None or cfg.data.get("prompts") is None:
        return None
    from teachers.conditions import load_prompts

    return load_prompts(cfg.data.prompts, "test")[0][:count]


def export_student(student, ema: EMAModel | None, path: Path, record: dict, run_dir: Path | None = None, source: str = "the run") -> Path:
    """The student's (EMA) weights, saved atomically: save_pretrained with the scheduler set for its own step(s),
    `record` (student_record) in student.json, and for image students the sample grid, the run's config and the
    model card. A folder already at `path` stays whole until the new one replaces it."""
    model = student_weights(student, ema)
    lora = None
    if has_lora(model):  # written twice: fused into the pipeline, and as LoRA weights for the teacher's pipeline
        lora = lora_state_dict(model)
        fuse_lora(model)
    scheduler, _, _ = model.export_scheduler(record["sigmas"])
    config = _run_config_or_none(run_dir)

    def write(tmp: Path) -> None:
        if scheduler is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True, scheduler=scheduler)
        if lora is not None:  # where the family's stock pipeline has a LoRA loader (Stable Diffusion)
            model.save_lora_weights(tmp, lora)
        (Path(tmp) / STUDENT_FILE).write_text(json.dumps(record) + "\n")
        if model.makes_images:
            teacher = _teacher_or_none(record, config, run_dir)
            sample_grid(model, teacher, record["sigmas"], Path(tmp) / GRID_FILE, record.get("prompts"), record.get("guidance_scale", 1.0))
            if config is not None:
                OmegaConf.save(config, Path(tmp) / CONFIG_FILE)
            _write_card(tmp, model, record, config, read_metrics(run_dir), source)

    return write_folder_atomic(path, write)


def write_model_card(path: Path, run_dir: Path, source: str = "the run") -> None:
    """(Re)write an exported image student's README.md, with the run's metrics.json as it is now."""
    path = Path(path)
    record = json.loads((path / STUDENT_FILE).read_text())
    model = teachers.load(path, key="student", family=record.get("family"))
    if model.makes_images:  # a toy MLP student has no card
        _write_card(path, model, record, _run_config_or_none(run_dir), read_metrics(run_dir), source)


def _write_card(folder: Path, model, record: dict, config, metrics: dict, source: str) -> None:
    teacher = record.get("teacher")
    license_id = teacher_license(Path(teacher_folder(teacher)) if teacher else None)
    card = model_card(model, record, None if config is None else OmegaConf.to_container(config), metrics, license_id, source)
    tmp = Path(folder) / f"{CARD_FILE}.tmp"
    tmp.write_text(card)
    tmp.replace(Path(folder) / CARD_FILE)


def teacher_folder(teacher: str) -> str:
    """A teacher string of student.json as a local path (zoo names resolved); hub ids stay as they are."""
    from teachers.zoo import resolve_model_path

    try:
        return str(resolve_model_path(teacher))
    except ConfigError:
        return teacher


def _run_config_or_none(run_dir: Path | None):
    return OmegaConf.load(Path(run_dir) / "config.yaml") if run_dir is not None and (Path(run_dir) / "config.yaml").is_file() else None


def _teacher_or_none(record: dict, config, run_dir: Path | None):
    """The teacher for the card's grid, when it is on this machine (a hub id is not fetched)."""
    candidates, family = [teacher_folder(record["teacher"])] if record.get("teacher") else [], record.get("family")
    if run_dir is not None and config is not None and config.teacher.path is None:
        candidates.append(str(Path(run_dir) / "teacher"))
    for candidate in candidates:
        if Path(candidate).is_dir():
            try:
                return teachers.load(candidate, family=family)
            except ConfigError:
                return None
    return None


def run_config(run_dir: Path) -> DictConfig:
    """The resolved config a run wrote (config.yaml): what rebuilds its student from a checkpoint."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml, so not a run directory of `python -m distill`")
    return OmegaConf.load(path)


def student_from_checkpoint(checkpoint: Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict]:
    """The student denoiser of a sealed checkpoint (its EMA weights unless use_ema=False) and its student_record.

    The architecture comes from the run's teacher (config.yaml beside checkpoints/); raises CorruptCheckpoint for a
    checkpoint whose files do not match its manifest, ConfigError for a folder that is not a checkpoint."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise ConfigError(f"{checkpoint}: not a complete checkpoint (no {COMPLETE_MARKER} manifest: half-written, or not a checkpoint)")
    tensors, _ = load_checkpoint(checkpoint)
    run_dir = checkpoint.parent.parent
    cfg = run_config(run_dir)
    student = teachers.load(teacher_path(cfg, run_dir), family=cfg.teacher.get("family"))
    if cfg.get("lora") is not None and cfg.lora.rank is not None:
        add_lora(student, cfg.lora)
    student.load_state_dict(tensors["student"])
    if use_ema and "ema" in tensors:  # EMAModel's shadow params, in student.parameters() order (TrainState)
        for i, param in enumerate(student.parameters()):
            param.data.copy_(tensors["ema"][str(i)])
    teacher = None if cfg.teacher.path is None else str(cfg.teacher.path)
    record = student_record(cfg.student.sigmas or [student.sigma_max], cfg.loss.guidance_scale, teacher, record_prompts(cfg),
                            cfg.teacher.get("family"))
    return student.eval().requires_grad_(False), record


def resolve_checkpoint(target: Path) -> Path:
    """A checkpoints/step-N folder as given, or a run directory's newest checkpoint that verifies."""
    if STEP_DIR.match(target.name) and target.is_dir() and not (target / "config.yaml").exists():
        if not (target / COMPLETE_MARKER).is_file():
            raise ConfigError(f"{target}: a checkpoint folder without its {COMPLETE_MARKER} manifest (half-written or not sealed)")
        return target
    if not target.is_dir():
        raise ConfigError(f"{target}: no such run directory or checkpoint folder")
    run_config(target)  # a run directory has its config
    found = latest_loadable(target / "checkpoints")
    if found is None:
        raise ConfigError(f"{target}: a run directory without a complete checkpoint in {target / 'checkpoints'}")
    return found


def export_checkpoint(checkpoint: Path, out: Path, use_ema: bool = True) -> Path:
    """The student of a sealed checkpoint exported to `out`, the folder layout of the run's own student/."""
    student, record = student_from_checkpoint(checkpoint, use_ema)
    source = f"checkpoint {checkpoint.name}" + ("" if use_ema else " (its raw weights, not the EMA)")
    return export_student(student, None, out, record, checkpoint.parent.parent, source=source)


def hub_files(folder: Path) -> list[str]:
    """What --push-to-hub uploads: every file of the export."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push_to_hub(folder: Path, repo_id: str, dry_run: bool = False) -> list[str]:
    """Upload the export with huggingface_hub (the user's token and network); a dry run only lists the files."""
    files = hub_files(folder)
    if not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="onestep-distill export")
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill.export", description="Re-export the student of any sealed checkpoint.")
    parser.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory (its newest checkpoint that verifies) or a checkpoints/step-N folder")
    parser.add_argument("--out", default=None, help="the export folder (default: <run dir>/exports/step-N)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="the EMA weights (default) or, with --no-ema, the raw ones")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out folder that is not an export")
    parser.add_argument("--lora", action="store_true", help="check that the run is a LoRA run; its export holds the fused pipeline, and "
                        "pytorch_lora_weights.safetensors beside it where the family's stock pipeline loads LoRA weights (Stable Diffusion; not DDPMPipeline or DiTPipeline)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the export (needs your token and network)")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list the files it would upload, upload nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Console entry point (`distill-export`); bad input is one `error:` line and exit 2, nothing written."""
    args = parse_args(argv)
    try:
        checkpoint = resolve_checkpoint(Path(args.target))
        if args.lora and run_config(checkpoint.parent.parent).get("lora", {}).get("rank") is None:
            raise ConfigError("--lora: this student has full weights (LoRA students come from runs with lora.rank set); export it without --lora")
        out = Path(args.out) if args.out else checkpoint.parent.parent / "exports" / checkpoint.name
        if out.exists() and not (out / STUDENT_FILE).is_file() and not args.overwrite:
            raise ConfigError(f"--out {out} exists and is not an exported student; pass --overwrite to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        export_checkpoint(checkpoint, out, use_ema=args.ema)
    except (ConfigError, CorruptCheckpoint) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {checkpoint} -> {out}")
    if args.push_to_hub:
        files = push_to_hub(out, args.push_to_hub, args.dry_run)
        print(("would upload" if args.dry_run else "uploaded") + f" to {args.push_to_hub}: " + ", ".join(files))
    return out


if __name__ == "__main__":
    main()
