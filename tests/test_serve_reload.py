"""Serving a run directory: the newest sealed checkpoint, a reload when a newer one is sealed, never a corrupt one."""
import io
import json
import time

import numpy as np
import pytest
import torch
from conftest import tiny_unet_denoiser
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from PIL import Image

from distill.checkpoint import seal, staging_dir, write_json, write_tensors
from distill.serve.__main__ import main as serve_main
from distill.serve.app import ServeSettings, create_app
from distill.serve.source import StudentSource


def write_checkpoint(run_dir, step: int, student: torch.nn.Module, ema: torch.nn.Module | None = None) -> None:
    """A sealed checkpoint holding only what serving reads: the student and its EMA (the student's weights unless
    given), as the loop writes them."""
    root = run_dir / "checkpoints"
    staging = staging_dir(root, step)
    staging.mkdir(parents=True)
    write_tensors(staging, "student", student.state_dict())
    write_tensors(staging, "ema", {str(i): p.clone() for i, p in enumerate((ema or student).parameters())})
    write_json(staging, "state", {"counters": {"step": step}})
    seal(staging, root, step, keep_last=10)


@pytest.fixture
def run_dir(tmp_path):
    teacher = tiny_unet_denoiser(num_classes=3)
    teacher.save_pretrained(tmp_path / "teacher")
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save({"teacher": {"path": str(tmp_path / "teacher")}, "student": {"sigmas": None}, "loss": {"guidance_scale": 1.0}},
                   run / "config.yaml")
    write_checkpoint(run, 1, teacher)
    return run, teacher


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def image(client) -> np.ndarray:
    reply = client.post("/generate", json={"seed": 1, "label": 2})
    assert reply.status_code == 200
    return np.asarray(Image.open(io.BytesIO(reply.content))).astype(int)


def wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_run_directory_reloads_a_newer_checkpoint_and_never_a_corrupt_one(run_dir, caplog):
    run, teacher = run_dir
    source = StudentSource(str(run))
    app = create_app(source, source.load_first(), ServeSettings(reload_every_s=0.05, warmup=False))
    with TestClient(app) as client:
        assert client.get("/health").json()["version"] == "step-1"
        first = image(client)
        write_checkpoint(run, 2, perturbed(teacher, 0))
        assert wait_for(lambda: client.get("/health").json()["version"] == "step-2")
        second = image(client)
        assert np.abs(second - first).max() > 0  # the new weights are what it serves
        write_checkpoint(run, 3, perturbed(teacher, 1))
        (run / "checkpoints" / "step-3" / "student.safetensors").write_bytes(b"truncated")
        with caplog.at_level("WARNING", logger="distill.serve"):
            assert wait_for(lambda: "step-3" in caplog.text)
        assert client.get("/health").json()["version"] == "step-2"  # the corrupt one is logged, never loaded
        assert np.abs(image(client) - second).max() <= 1
    assert "not reloading step-3" in caplog.text


def test_a_run_starts_from_its_newest_checkpoint_that_verifies(run_dir):
    run, teacher = run_dir
    write_checkpoint(run, 2, perturbed(teacher, 0))
    (run / "checkpoints" / "step-2" / "ema.safetensors").write_bytes(b"bad")
    assert StudentSource(str(run)).load_first().version == "step-1"


def test_a_checkpoint_folder_serves_that_step_with_its_ema_weights(run_dir):
    run, teacher = run_dir
    import copy

    ema = copy.deepcopy(teacher)
    write_checkpoint(run, 2, perturbed(teacher, 0), ema=perturbed(ema, 5))
    write_checkpoint(run, 3, teacher)
    loaded = StudentSource(str(run / "checkpoints" / "step-2")).load_first()
    assert loaded.version == "step-2" and loaded.sigmas == pytest.approx([float(teacher.sigma_max)])
    for served, averaged in zip(loaded.denoiser.parameters(), ema.parameters()):  # step-2's EMA, not its raw weights
        assert torch.equal(served, averaged)  # a copy of the same stored tensor


@pytest.mark.parametrize("setup", ["no_manifest", "no_checkpoint"])
def test_a_half_written_checkpoint_or_an_empty_run_is_one_error_line(run_dir, setup, capsys):
    run, _ = run_dir
    if setup == "no_manifest":
        target = run / "checkpoints" / "step-1"
        (target / "COMPLETE").unlink()
        expected = "without its COMPLETE manifest"
    else:
        for path in (run / "checkpoints" / "step-1").iterdir():
            path.unlink()
        (run / "checkpoints" / "step-1").rmdir()
        target, expected = run, "without a complete checkpoint"
    with pytest.raises(SystemExit) as exit_info:
        serve_main([str(target)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error:") and expected in err and len(err.splitlines()) == 1


def test_health_of_a_run_reports_its_kind(run_dir):
    run, _ = run_dir
    source = StudentSource(str(run))
    with TestClient(create_app(source, source.load_first(), ServeSettings(warmup=False))) as client:
        health = client.get("/health").json()
    assert health["kind"] == "run" and health["num_classes"] == 3 and json.dumps(health)
