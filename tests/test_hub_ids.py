"""Teachers by hub id from an offline Hugging Face cache, as cluster nodes without network have them: every family
loads by folder, zoo name and cached hub id alike, and a run on a hub-id teacher goes through every entry point."""
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import compose_config, tiny_dit_denoiser, tiny_sd3_denoiser, tiny_sdxl_denoiser

import teachers
from teachers.errors import ConfigError
from teachers.families import detect
from teachers.io import save_pretrained_atomic
from teachers.mlp import MLPDenoiser
from teachers.zoo import zoo_path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def lay_into_cache(hub: Path, repo_id: str, folder) -> None:
    """A model folder as the cache holds a hub repository's snapshot: models--OWNER--NAME/snapshots/<hex>/..., refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd_folder):
    """Local folders of every family: the tiny SD and SDXL, a tiny DiT, zoo:mnist_cond (UNet), a tiny MLP."""
    root = tmp_path_factory.mktemp("families")
    save_pretrained_atomic(tiny_dit_denoiser(), root / "dit")
    save_pretrained_atomic(tiny_sdxl_denoiser(), root / "sdxl")
    save_pretrained_atomic(tiny_sd3_denoiser(), root / "sd3")
    save_pretrained_atomic(MLPDenoiser(dim=2, hidden_dim=8, num_layers=1, emb_dim=4), root / "mlp")
    return {"sd": tiny_sd_folder, "sdxl": root / "sdxl", "sd3": root / "sd3", "dit": root / "dit", "unet": zoo_path("mnist_cond"), "mlp": root / "mlp"}


@pytest.fixture
def hub(tmp_path, folders, monkeypatch):
    """A private cache holding every family as acme/<family>, read offline (HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hf" / "hub"
    for family, folder in folders.items():
        lay_into_cache(cache, f"acme/{family}", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def probe(model):
    """One denoiser output on fixed input (and the conds its family takes)."""
    x = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(0))
    cond = model.encode_condition(["a seven", "a two"]) if model.text_conditional else torch.tensor([1, 2]) if model.num_classes else None
    with torch.no_grad():
        return model(x, torch.tensor([0.5, 3.0]), cond)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "dit", "unet", "mlp"])
def test_every_family_loads_by_folder_and_by_cached_hub_id(hub, folders, family):
    by_folder, by_id = teachers.load(folders[family]), teachers.load(f"acme/{family}")
    assert by_folder.family == by_id.family == detect(f"acme/{family}").name == family
    torch.testing.assert_close(probe(by_id), probe(by_folder))


def test_zoo_names_load_through_the_one_loader():
    assert teachers.load("zoo:mnist_sd").family == "sd" and teachers.load("zoo:mnist_cond_student").family == "unet"


@pytest.mark.parametrize("path, message", [
    ("acme/absent", "teacher.path=acme/absent is not found locally; as a hub id it needs network, or a filled Hugging Face cache"),
    ("./no/such/folder", "teacher.path=./no/such/folder: no such folder"),
    ("zoo:nothing", "zoo:nothing: the package ships no such model"),
])
def test_a_teacher_that_is_neither_local_nor_cached_is_one_line(hub, path, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        teachers.load(path)


# The SD miniature's recipe, and DMD2's SDXL one (its GAN on the captioned digits; SDXL's own FID protocol needs
# Inception weights: the domain classifier here).
PRESETS = {"sd": ["experiment=mnist_sd_dmd2"],
           "sdxl": ["experiment=sdxl_dmd2", "data=mnist_sd", "teacher.dtype=float32", "train.mixed_precision=no",
                    "eval.feature_extractor=domain", "eval.center_crop=28"],
           "sd3": ["experiment=mnist_sd_dmd2"]}
HEUN_2 = {"sd": "teacher_heun_nfe3", "sdxl": "teacher_heun_nfe3", "sd3": "teacher_heun_nfe2"}  # Heun's first step from t = 1 is Euler


@pytest.mark.parametrize("family", ["sd", pytest.param("sdxl", marks=pytest.mark.slow), pytest.param("sd3", marks=pytest.mark.slow)])
# sdxl, sd3: CI time (their loading by id is tested above, their distill/export/serve paths in tests/test_sdxl.py and
# tests/test_sd3.py; `make test-slow` runs them here)
def test_a_text_teacher_by_hub_id_through_distill_export_eval_serve_and_both_benches(hub, tmp_path, monkeypatch, family):
    from distill.bench_train import main as bench_train_main
    from distill.export import main as export_main
    from distill.loop import run
    from distill.serve.model import PreviewModel
    from distill.serve.source import StudentSource
    from eval.bench import main as bench_main
    from eval.run import run as eval_run

    run_dir, cache, repo = tmp_path / "run", tmp_path / "cache", f"acme/{family}"
    overrides = [*PRESETS[family], "debug=cpu_tiny_sd", f"teacher.path={repo}", f"run_dir={run_dir}",
                 f"eval.cache_dir={cache}", "eval.second_classifier=null", "train.max_steps=1"]
    metrics = run(compose_config("train", overrides))  # distill: train, export, evaluate
    assert set(metrics) == {HEUN_2[family], "student_nfe1"}
    recorded = (run_dir / "config.yaml").read_text()
    assert f"family: {family}" in recorded and f"path: {repo}" in recorded
    assert json.loads((run_dir / "student" / "student.json").read_text())["family"] == family

    out = export_main([str(run_dir), "--out", str(tmp_path / "export")])  # export re-reads the run's teacher by its id
    assert teachers.load(out, key="student").family == family

    eval_cfg = compose_config("eval", [*PRESETS[family], f"teacher.path={repo}", f"student_path={out}",
                                       f"run_dir={tmp_path / 'eval'}", f"eval.cache_dir={cache}", "eval.second_classifier=null",
                                       "eval.num_samples=32", "eval.batch_size=32", "eval.teacher_samplers=[{name: heun, num_steps: 2}]",
                                       "eval.bootstrap_resamples=20", "eval.kid_subsets=10", "eval.kid_subset_size=16"])
    assert set(eval_run(eval_cfg)) == {HEUN_2[family], "student_nfe1"}

    model = PreviewModel(StudentSource(str(run_dir)).load_first())  # serve: the run's newest checkpoint
    image = model.generate([7], ["a handwritten seven"])
    assert image.shape == (1, 32, 32, 1)

    monkeypatch.setattr("sys.argv", ["eval.bench", repo, str(out), "--samplers", "euler:1", "--batch-size", "2",
                                     "--repeats", "1", "--out", str(tmp_path / "bench.json")])
    bench_main()
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"teacher_euler_nfe1", "student_nfe1"}

    preset, *extra = PRESETS[family]
    (result,) = bench_train_main([preset.removeprefix("experiment="), *[f"--override={o}" for o in extra],
                                  "--override=debug=cpu_tiny_sd", f"--override=teacher.path={repo}", "--override=train.batch_size=2",
                                  "--repeats", "1", "--out", str(tmp_path / "bench_train")])
    assert result["step_ms"] > 0 and any("GAN" in part for part in result["parts"])


def test_a_unet_teacher_by_hub_id_and_a_zoo_student_in_eval(hub, tmp_path):
    from eval.run import load_models

    cfg = compose_config("eval", ["experiment=mnist_cond", "teacher.path=acme/unet", "student_path=zoo:mnist_cond_student"])
    teacher, student = load_models(cfg)
    assert teacher.unguided.family == student.family == "unet" and student.num_classes == 10


def test_distill_validation_detects_the_family_of_a_hub_id(hub):
    from distill.config import validate

    cfg = compose_config("train", ["experiment=mnist_cond", "teacher.path=acme/dit", "run_dir=x"])
    with pytest.raises(ConfigError, match="teacher.path=acme/dit is a dit teacher .DiTPipeline., not one teacher=unet takes; use teacher=dit"):
        validate(cfg)
    dit = compose_config("train", ["experiment=dit_xl2_dmd2", "debug=cpu_tiny_sd", "teacher.path=acme/dit", "run_dir=x",
                                   "teacher.dtype=float32", "train.mixed_precision=no"])
    validate(dit)
    assert dit.teacher.family == "dit"
