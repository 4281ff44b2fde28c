"""What the preview server serves: an exported student folder, `zoo:<name>`, a run directory (its newest sealed
checkpoint, reloaded when a newer one is sealed) or one checkpoint folder."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.checkpoint import STEP_DIR, CorruptCheckpoint, complete_checkpoints, verify
from distill.export import resolve_checkpoint, student_from_checkpoint
from eval.harness import STUDENT_FILE, read_student_record
from teachers.errors import ConfigError
import teachers
from teachers.zoo import resolve_model_path

log = logging.getLogger("distill.serve")


@dataclass(frozen=True)
class LoadedStudent:
    """A student denoiser with the sigma list it samples on, and the version it came from (shown in /health)."""

    denoiser: torch.nn.Module
    sigmas: list[float]
    version: str
    prompts: tuple[str, ...] = ()  # a text student's evaluation prompts (student.json): the page's first prompt


class StudentSource:
    """Resolves STUDENT once at start (errors are ConfigError, before any work) and loads it; a run directory also
    answers whether a newer sealed checkpoint exists."""

    def __init__(self, spec: str):
        self.spec = spec
        self.path = Path(resolve_model_path(spec))
        self.kind = self._kind(self.path)
        self.bad: set[str] = set()  # checkpoints that failed to verify: never retried

    def _kind(self, path: Path) -> str:
        if not path.exists():
            raise ConfigError(f"STUDENT {self.spec}: no such file or folder")
        if (path / STUDENT_FILE).is_file():
            return "folder"
        if not (STEP_DIR.match(path.name) or (path / "checkpoints").is_dir() or (path / "config.yaml").is_file()):
            raise ConfigError(f"STUDENT {self.spec}: not a student (expected an exported student/ folder with {STUDENT_FILE}, "
                              "a run directory, a checkpoints/step-N folder or zoo:<name>)")
        try:  # the export command's rules: a sealed manifest, the run's config, a checkpoint that verifies
            checkpoint = resolve_checkpoint(path)
        except ConfigError as err:
            raise ConfigError(f"STUDENT {self.spec}: {err}") from None
        return "checkpoint" if checkpoint == path else "run"

    def newest(self) -> Path | None:
        """A run's newest sealed checkpoint not known to be corrupt (None for the other kinds)."""
        if self.kind != "run":
            return None
        found = [path for _, path in complete_checkpoints(self.path / "checkpoints") if str(path) not in self.bad]
        return found[-1] if found else None

    def load(self, checkpoint: Path | None = None) -> LoadedStudent:
        """The student (the given checkpoint of a run, else what STUDENT names); CorruptCheckpoint is remembered."""
        if self.kind == "folder":
            record = read_student_record(self.path)
            denoiser = teachers.load(self.path, key="STUDENT", family=record.get("family"))
            return LoadedStudent(denoiser, record.get("sigmas") or [float(denoiser.sigma_max)], f"folder {self.path.name}",
                                 tuple(record.get("prompts") or ()))
        checkpoint = checkpoint or (self.path if self.kind == "checkpoint" else self.newest())
        if checkpoint is None:
            raise ConfigError(f"STUDENT {self.spec}: no checkpoint that verifies")
        try:
            verify(checkpoint)
            denoiser, record = student_from_checkpoint(checkpoint)
        except CorruptCheckpoint:
            self.bad.add(str(checkpoint))
            raise
        return LoadedStudent(denoiser, record["sigmas"], checkpoint.name, tuple(record.get("prompts") or ()))

    def load_first(self) -> LoadedStudent:
        """The student at start: a run's newest checkpoint that verifies, corrupt ones skipped with a warning."""
        while True:
            try:
                return self.load()
            except CorruptCheckpoint as err:
                if self.kind != "run":
                    raise ConfigError(f"STUDENT {self.spec}: {err}") from None
                log.warning("skipping a corrupt checkpoint: %s", err)

    def reload_if_newer(self, current: str) -> LoadedStudent | None:
        """A run's newer sealed checkpoint, loaded; None when there is none or it is corrupt (logged, never served)."""
        newest = self.newest()
        if newest is None or newest.name == current or _step(newest.name) <= _step(current):
            return None
        try:
            loaded = self.load(newest)
        except (CorruptCheckpoint, ConfigError) as err:
            self.bad.add(str(newest))
            log.warning("not reloading %s: %s; still serving %s", newest.name, err, current)
            return None
        log.info("reloaded the student from %s (was %s)", newest.name, current)
        return loaded


def _step(name: str) -> int:
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else -1
