"""EDM teachers: NVlabs pickles converted without running them, the networks as a family, the papers' presets.

The pickles here are made the way NVlabs' `torch_utils.persistence` makes them (each network object stored as
`_reconstruct_persistent_obj(meta)`, meta holding its class name, its state with the recorded constructor arguments,
and its module's source code), through a stand-in of that module registered for the test.
"""
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from fastapi.testclient import TestClient
from PIL import Image

import teachers
from distill.card import snippet_from_card, student_images
from distill.config import validate, loss_terms
from teachers import edm_nets
from teachers.convert import main as convert_main
from teachers.edm import EDMDenoiser
from teachers.errors import ConfigError

MARKER = "edm_module_src_ran"  # a file the pickled module source would create if it were ever executed
EVIL_SOURCE = f"import pathlib\npathlib.Path('{MARKER}').write_text('ran')\n"

SONG = dict(model_type="SongUNet", img_resolution=16, img_channels=3, model_kwargs=dict(
    model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.13, augment_dim=9,
    embedding_type="positional", encoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1]))
NCSN = dict(model_type="SongUNet", img_resolution=16, img_channels=3, model_kwargs=dict(
    model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], embedding_type="fourier",
    encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]))
ADM = dict(model_type="DhariwalUNet", img_resolution=16, img_channels=3, model_kwargs=dict(
    model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1))
EDM2 = dict(model_type="EDM2UNet", img_resolution=16, img_channels=3, model_kwargs=dict(
    model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1))
CASES = {  # (preconditioning class, constructor arguments, labels)
    "ddpmpp-vp-cond": ("VPPrecond", SONG, 10),
    "ncsnpp-ve-uncond": ("VEPrecond", NCSN, 0),
    "adm-edm-cond": ("EDMPrecond", ADM, 10),
    "edm2-cond": ("Precond", EDM2, 10),
}
PRECOND = {"VPPrecond": "vp", "VEPrecond": "ve", "EDMPrecond": "edm", "Precond": "edm"}
NVLABS_NAMES = {"EDM2UNet": "UNet"}  # the toolkit's class names that differ from NVlabs'


class EDM2Precond(torch.nn.Module):
    """EDM2's wrapper: the network under `unet`, beside the uncertainty head (logvar_*) the converter leaves out."""

    def __init__(self, init_kwargs: dict, unet: torch.nn.Module):
        super().__init__()
        self.class_name, self.init_kwargs, self.unet = "Precond", init_kwargs, unet
        self.logvar_fourier, self.logvar_linear = edm_nets.MPFourier(8), edm_nets.MPConv(8, 1, [])


def reconstruct(meta):  # never called: the converter resolves this global to its own stand-in
    raise AssertionError("the converter ran the pickle's reconstruct function")


@pytest.fixture
def persistence(monkeypatch):
    """torch_utils.persistence as a module pickle can name (only its name matters to the pickles)."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    reconstruct.__module__, reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = reconstruct
    package.persistence = module
    monkeypatch.setitem(sys.modules, "torch_utils", package)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
    return module


class Precond(torch.nn.Module):
    """What NVlabs' preconditioning wrappers hold: the network under `model`, and their recorded arguments."""

    def __init__(self, name: str, init_kwargs: dict, model: torch.nn.Module):
        super().__init__()
        self.class_name, self.init_kwargs, self.model = name, init_kwargs, model


class PersistencePickler(pickle.Pickler):
    """Pickles the EDM layers and the wrapper as torch_utils.persistence does: class name, state, module source."""

    def reducer_override(self, obj):
        wrapper = isinstance(obj, (Precond, EDM2Precond))
        name = obj.class_name if wrapper else NVLABS_NAMES.get(type(obj).__name__, type(obj).__name__)
        if wrapper or (isinstance(obj, torch.nn.Module) and type(obj).__module__ == edm_nets.__name__):
            state = {k: v for k, v in obj.__dict__.items() if k not in ("class_name", "init_kwargs")}
            state |= {"_init_args": (), "_init_kwargs": getattr(obj, "init_kwargs", {})}
            meta = dict(type="class", version=6, module_src=EVIL_SOURCE, class_name=name, state=state)
            return reconstruct, (meta,)
        return NotImplemented


def nvlabs_pickle(path: Path, precond: str, kwargs: dict, label_dim: int, seed: int = 0) -> EDMDenoiser:
    """A snapshot pickle as NVlabs' training loop writes it (ema, loss_fn, augment_pipe, dataset_kwargs) of a random
    network; returns the same network as the toolkit's denoiser (the reference the conversion must reproduce)."""
    torch.manual_seed(seed)
    ours = EDMDenoiser(label_dim=label_dim, precond=PRECOND[precond], **kwargs).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    init = {"img_resolution": kwargs["img_resolution"], "img_channels": kwargs["img_channels"], "label_dim": label_dim,
            "use_fp16": False, "model_type": kwargs["model_type"], **kwargs["model_kwargs"]}
    init["dropout"] = np.float64(init.get("dropout", 0.1))  # numpy scalars occur in real snapshots' arguments
    if precond == "Precond":  # EDM2: no model_type, the network under `unet`
        del init["model_type"]
        network = EDM2Precond(init | {"logvar_channels": 8}, ours.model)
    else:
        network = Precond(precond, init, ours.model)
    snapshot = {"ema": network, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {"path": "x.zip"}}
    with open(path, "wb") as f:
        PersistencePickler(f, protocol=4).dump(snapshot)
    return ours


@pytest.mark.parametrize("case", CASES)
def test_a_converted_network_reproduces_the_original_at_every_sigma_with_and_without_labels(case, persistence, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    precond, kwargs, label_dim = CASES[case]
    original = nvlabs_pickle(tmp_path / "net.pkl", precond, kwargs, label_dim)
    assert run_cli(convert_main, [str(tmp_path / "net.pkl"), str(tmp_path / "out")], monkeypatch) == 0
    assert "wrote" in capsys.readouterr().out
    assert not (tmp_path / MARKER).exists()  # the module source in every object's meta never ran
    assert teachers.families.detect(tmp_path / "out").name == "edm"
    converted = teachers.load(tmp_path / "out")
    assert (converted.num_classes, converted.shape) == (label_dim or None, (3, 16, 16))
    assert converted.sigma_min == (0.02 if precond == "VEPrecond" else 0.002) and converted.sigma_max == 80.0
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 7, 9])
    for sigma in (0.002, 0.1, 1.0, 10.0, 80.0):
        for cond in ([None, labels] if label_dim else [None]):
            with torch.no_grad():
                want, got = original(x * (1 + sigma), sigma, cond), converted(x * (1 + sigma), sigma, cond)
            assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5, (sigma, cond)
    if label_dim:  # the labels matter: a different class gives a different denoising
        with torch.no_grad():
            assert not torch.allclose(converted(x, 1.0, labels), converted(x, 1.0, labels.flip(0)), atol=1e-4)


class Evil:
    def __reduce__(self):
        import os

        return os.system, (f"touch {MARKER}",)


def bad_pickles(tmp_path: Path) -> dict:
    """name -> (pickle path, words the error names)."""
    good = tmp_path / "good.pkl"
    nvlabs_pickle(good, "VPPrecond", SONG, 10)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"ema": Evil()}))
    cases["runs a command"] = (tmp_path / "evil.pkl", ["unknown global", "system"])
    unknown = dict(type="class", version=6, module_src=EVIL_SOURCE, class_name="MysteryNet", state={})

    class Unknown:
        def __reduce__(self):
            return reconstruct, (unknown,)

    (tmp_path / "unknown.pkl").write_bytes(pickle.dumps({"ema": Unknown()}))
    cases["unknown class"] = (tmp_path / "unknown.pkl", ["unknown persistent class MysteryNet"])
    (tmp_path / "truncated.pkl").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.pkl", ["truncated"])
    latent = dict(type="class", version=6, module_src=EVIL_SOURCE, class_name="StabilityVAEEncoder", state={})

    class LatentEncoder:
        def __reduce__(self):
            return reconstruct, (latent,)

    (tmp_path / "latent.pkl").write_bytes(pickle.dumps({"ema": None, "encoder": LatentEncoder()}))
    cases["latent EDM2"] = (tmp_path / "latent.pkl", ["latent EDM2 network", "StabilityVAEEncoder"])
    (tmp_path / "no_ema.pkl").write_bytes(pickle.dumps({"loss_fn": None, "dataset_kwargs": {}}))
    cases["no ema"] = (tmp_path / "no_ema.pkl", ["no 'ema'", "loss_fn"])
    return cases


def test_bad_pickles_are_one_error_line_each_and_nothing_runs_or_is_written(persistence, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, (path, words) in bad_pickles(tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        assert run_cli(convert_main, [str(path), str(out)], monkeypatch) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and all(w in err for w in words), (name, err)
        assert not out.exists() and not (tmp_path / MARKER).exists(), name


def test_an_output_folder_that_is_not_a_converted_network_is_refused_and_a_conversion_is_replaced(persistence, tmp_path, monkeypatch, capsys):
    nvlabs_pickle(tmp_path / "net.pkl", "EDMPrecond", ADM, 10)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_cli(convert_main, [str(tmp_path / "net.pkl"), str(other)], monkeypatch) == 2
    assert "is not a converted network" in capsys.readouterr().err and (other / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    for _ in range(2):  # a second conversion into its own earlier output replaces it
        assert run_cli(convert_main, [str(tmp_path / "net.pkl"), str(out)], monkeypatch) == 0
    assert json.loads((out / "config.json").read_text())["_class_name"] == "EDMDenoiser"


def test_the_presets_validate_with_the_papers_settings(persistence, tmp_path):
    nvlabs_pickle(tmp_path / "net.pkl", "VPPrecond", {**SONG, "img_resolution": 32}, 10)
    teachers.convert.convert(tmp_path / "net.pkl", tmp_path / "cifar")
    expected = {  # preset: (fake updates per student update, regression weight, GAN generator weight, student lr)
        "cifar10_edm_dmd": (1, 0.25, 0.0, 5e-5), "cifar10_edm_dmd_uncond": (1, 0.25, 0.0, 5e-5),
        "cifar10_edm_dmd2": (5, 0.0, 3.072, 1e-4), "cifar10_edm_dmd2_uncond": (5, 0.0, 3.072, 1e-4),
        "imagenet64_edm_dmd2": (5, 0.0, 36.864, 2e-6),
    }
    for preset, (fake_steps, regression, gan, lr) in expected.items():
        cfg = compose_config("train", [f"experiment={preset}", f"teacher.path={tmp_path / 'cifar'}", "run_dir=unused",
                                       "data=image_folder", f"data.path={tmp_path}"])
        student_terms = {name: term.weight for name, term in loss_terms(cfg.loss)[0].items()}
        assert (cfg.train.num_fake_steps_per_student_step, student_terms.get("regression", 0.0) / 3072, student_terms.get("gan_generator", 0.0),
                cfg.optim.student_lr) == (fake_steps, regression, gan, lr), preset
        assert cfg.teacher.kind == "edm" and cfg.student.sigmas == [80.0] and cfg.loss.guidance_scale == 1.0
        assert cfg.eval.num_samples == 50000 and cfg.eval.feature_extractor == "inception"
        validate(cfg)
        assert cfg.teacher.family == "edm"
    assert compose_config("train", ["experiment=imagenet64_edm_dmd2", "run_dir=x"]).eval.teacher_samplers[0].num_steps == 40
    with pytest.raises(ConfigError, match=r"teacher.path=./models/edm-cifar10-32x32-cond-vp: no such folder.*distill-convert"):
        validate(compose_config("train", ["experiment=cifar10_edm_dmd2", "run_dir=x", "data=image_folder", f"data.path={tmp_path}"]))
    with pytest.raises(ConfigError, match="teacher=edm needs teacher.path .*distill-convert"):
        validate(compose_config("train", ["experiment=cifar10_edm_dmd2", "teacher.path=null", "run_dir=x",
                                          "data=image_folder", f"data.path={tmp_path}"]))


def random_images(folder: Path, count: int = 24, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / str(i % 2) / f"{i}.png")
    return folder


def test_a_bf16_teacher_and_a_bf16_autocast_student_stay_near_float32(tmp_path):
    """teacher.dtype=bfloat16 (the frozen network in bf16) and train.mixed_precision=bf16 (autocast) on an ADM."""
    net = EDMDenoiser(label_dim=10, **ADM).eval()
    net.save_pretrained(tmp_path / "net")
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        want = net(x, 2.0, labels)
        half = teachers.load(tmp_path / "net", dtype="bfloat16")
        assert half.model.map_layer0.weight.dtype == torch.bfloat16
        got = half(x, 2.0, labels)
    assert got.dtype == torch.float32 and ((got - want).abs().max() / want.abs().max()).item() < 5e-2
    student = EDMDenoiser(label_dim=10, **ADM).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(x, 80.0, labels)
    out.float().square().mean().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


SMOKE = {  # preset: the tiny network of the paper's architecture it runs on (preconditioning, arguments, labels)
    "cifar10_edm_dmd": ("EDMPrecond", SONG, 10), "cifar10_edm_dmd2": ("EDMPrecond", SONG, 10),
    "cifar10_edm_dmd2_uncond": ("VPPrecond", SONG, 0),  # cifar10_edm_dmd_uncond differs from it only in the loss
    "imagenet64_edm_dmd2": ("EDMPrecond", {**ADM, "model_kwargs": {**ADM["model_kwargs"], "model_channels": 16,
                                                                    "channel_mult": [1, 1, 2]}}, 10),  # 64 px: small
}


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p.startswith("imagenet") else p for p in SMOKE])  # CI time
def test_a_preset_distills_a_tiny_converted_network_whose_student_card_and_server_work(preset, persistence, tmp_path):
    from distill.loop import run
    from distill.serve.app import ServeSettings, create_app
    from distill.serve.source import StudentSource

    precond, kwargs, label_dim = SMOKE[preset]
    size = 64 if preset.startswith("imagenet") else 32
    nvlabs_pickle(tmp_path / "net.pkl", precond, {**kwargs, "img_resolution": size}, label_dim)
    teachers.convert.convert(tmp_path / "net.pkl", tmp_path / "teacher")
    run_dir = tmp_path / "run"
    metrics = run(compose_config("train", [
        f"experiment={preset}", "debug=cpu_tiny_image", f"teacher.path={tmp_path / 'teacher'}", "data=image_folder",
        f"data.path={random_images(tmp_path / 'imgs', size=size)}", "eval.feature_extractor=domain", "eval.reference_stats=null",
        "eval.num_samples=16", "eval.batch_size=16", f"eval.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}",
        "loss.pairs.num_pairs=16", "train.mixed_precision=no",  # bf16 autocast on a CPU: minutes (test below)
    ]))
    assert set(metrics) == {"teacher_heun_nfe3", "student_nfe1"} and metrics["student_nfe1"]["fid"] > 0
    student = run_dir / "student"
    assert json.loads((student / "config.json").read_text())["_class_name"] == "EDMDenoiser"
    card = (student / "README.md").read_text()
    assert "no diffusers pipeline exists for EDM's networks" in card and "library_name" not in card
    scope = {}
    exec(snippet_from_card(card).replace('teachers.load(".")', f'teachers.load("{student}")'), scope)  # the card's own code
    loaded = teachers.load(student, family="edm")
    noise = torch.randn((4, 3, size, size), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3]) if label_dim else None
    ours = student_images(loaded, noise, [80.0], labels, torch.Generator().manual_seed(0))
    assert np.abs(scope["images"] - ours.permute(0, 2, 3, 1).numpy()).max() < 1e-3
    source = StudentSource(str(student))
    with TestClient(create_app(source, source.load_first(), ServeSettings(warmup=False))) as client:
        reply = client.post("/generate", json={"seed": 3, "num_images": 1} | ({"label": 2} if label_dim else {}))
        assert reply.status_code == 200 and client.get("/health").json()["num_classes"] == (label_dim or None)


def test_an_edm2_student_trains_with_forced_weight_normalisation():
    """EDM2's layers normalise their stored weights in training (Karras et al. 2024, sec. 2.5): a training step keeps
    every MPConv weight at unit norm per output channel, and gradients reach the gains that start at zero."""
    student = EDMDenoiser(label_dim=10, **EDM2).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(2):
        student(torch.randn(2, 3, 16, 16), 1.0, torch.tensor([1, 2])).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    student(torch.randn(2, 3, 16, 16), 1.0, torch.tensor([1, 2]))  # normalises the weights the last step moved
    for layer in (m for m in student.modules() if isinstance(m, edm_nets.MPConv)):
        norms = layer.weight.flatten(1).norm(dim=1) / layer.weight[0].numel() ** 0.5
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    assert student.model.out_gain.item() != 0
