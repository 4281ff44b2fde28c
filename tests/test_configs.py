"""Every preset and group option composes into a config that passes validation."""
import pytest

from conftest import compose_config
from distill.config import validate
from teachers.cli import CONFIG_DIR, check_presets
from teachers.errors import ConfigError

GROUPS = ["teacher", "data", "student", "loss", "optim", "eval", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
# Options for image data compose on top of the MNIST preset; the rest on the toy default.
IMAGE_OPTIONS = {("data", "mnist"), ("data", "digits"), ("data", "image_folder"), ("data", "hub"), ("teacher", "unet"),
                 ("eval", "fid"), ("debug", "cpu_tiny_image"), ("experiment", "mnist"), ("experiment", "demo")}


# Text-to-image options (a Stable Diffusion teacher and prompts) compose on the miniature SD's preset; the full-size
# recipes name hub teachers and the user's prompt files, so they validate in tests/test_sd_presets.py and
# tests/test_sdxl.py on tiny folders.
TEXT_OPTIONS = {("teacher", "sd"), ("teacher", "sd_mini"), ("teacher", "sd3"), ("teacher", "sd3_mini"), ("teacher", "flux"), ("data", "mnist_sd"), ("debug", "cpu_tiny_sd")}
USER_FILES = {("data", "prompts"), ("data", "coco"), ("experiment", "sd15_dmd2"), ("experiment", "sd15_dmd2_gan"), ("experiment", "sd15_dmd"),
              ("experiment", "sdxl_dmd2"), ("experiment", "sdxl_dmd2_4step"), ("experiment", "sd35_dmd2"), ("experiment", "flux_dmd2"), ("experiment", "dit_xl2_dmd2"), ("teacher", "dit"),
              ("teacher", "edm"), *(("experiment", f"{name}{kind}") for name in ("cifar10_edm_dmd", "cifar10_edm_dmd2") for kind in ("", "_uncond")),
              ("experiment", "imagenet64_edm_dmd2")}  # the EDM presets name the user's converted folders (tests/test_edm.py)
HUB_TEACHERS = {("experiment", "cifar10")}  # names a hub teacher: validation reads its model_index.json (network or cache)


def is_text(group: str, option: str) -> bool:
    return (group, option) in TEXT_OPTIONS | USER_FILES or (group == "experiment" and option.startswith("mnist_sd"))


def is_image(group: str, option: str) -> bool:
    return not is_text(group, option) and (
        (group, option) in IMAGE_OPTIONS or (group == "experiment" and option.startswith(("mnist", "digits", "cifar"))))


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes_and_validates(group, option):
    if (group, option) in USER_FILES:  # they name the user's files or hub models: composition only here
        base = ["experiment=mnist_sd"] if group == "data" else ["experiment=mnist"] if group == "teacher" else []
        cfg = compose_config("train", [*base, f"{group}={option}", "run_dir=unused"])
        assert cfg.teacher.kind in ("sd", "dit", "edm") and cfg.data.kind == "image"
        return
    if (group, option) in HUB_TEACHERS:
        cfg = compose_config("train", [f"{group}={option}", "run_dir=unused"])
        assert cfg.teacher.kind == "unet" and "/" in cfg.teacher.path
        return
    if is_text(group, option):
        base = ["experiment=mnist_sd"] if group != "experiment" else []
        cfg = compose_config("train", [*base, f"{group}={option}", "run_dir=unused"])
        task = validate(cfg)
        assert task.kind == "image" and cfg.teacher.kind == "sd" and cfg.data.prompts is not None
        return
    base = ["experiment=mnist"] if is_image(group, option) and group != "experiment" else []
    cfg = compose_config("train", [*base, f"{group}={option}", "run_dir=unused"])
    task = validate(cfg)
    if is_image(group, option):
        assert task.kind == "image" and cfg.teacher.kind == "unet" and "reference_split" in cfg.eval
    else:
        assert task.kind == "toy" and task.mixture.dim == len(cfg.data.means[0])
    for key in ("seed", "deterministic"):
        assert key in cfg
    assert cfg.train.max_steps >= 0 and cfg.train.checkpoint_every > 0


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("entry", ["teacher_train", "eval"])
def test_experiments_compose_for_the_other_entry_points(entry, experiment):
    cfg = compose_config(entry, [f"experiment={experiment}", "run_dir=unused"])
    if is_text("experiment", experiment):
        assert cfg.data.kind == "image" and cfg.teacher.kind in ("sd", "dit", "edm")
    elif is_image("experiment", experiment):
        assert cfg.data.kind == "image" and cfg.teacher.kind == "unet"
    else:
        assert cfg.data.means and cfg.teacher.net.hidden_dim > 0


def test_teacher_train_steps_come_from_the_teacher_fit():
    cfg = compose_config("teacher_train", ["experiment=toy_grid25", "run_dir=unused"])
    assert cfg.train.max_steps == cfg.teacher.fit.max_steps


def test_command_line_mixture_in_16d():
    means = "[" + ",".join("[" + ",".join(["1" if i == j else "0" for i in range(16)]) + "]" for j in range(3)) + "]"
    cfg = compose_config("train", [f"data.means={means}", "data.stds=[0.1,0.1,0.1]", "data.weights=[0.5,0.25,0.25]", "run_dir=x"])
    assert validate(cfg).mixture.dim == 16


def test_unknown_preset_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="unknown experiment preset 'nope'; allowed: .*toy_gmm"):
        check_presets(["experiment=nope"])
    with pytest.raises(ConfigError, match="unknown data preset 'ring9'"):
        check_presets(["data=ring8,ring9"])
    check_presets(["experiment=toy_gmm", "train.max_steps=3", "hydra.run.dir=x", "debug=null"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.student.dmd.weight=-1", "loss.student.dmd.weight=-1"),
        ("loss.student.regression.distance=lpips2", "allowed: l2, pseudo_huber"),
        ("student.num_steps=4", "student.num_steps=4"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("teacher.real=exactish", "allowed: network, analytic"),
        ("eval.teacher_samplers=[{name:dpm,num_steps:4}]", "name=dpm"),
        ("train.ema_decay=1.5", "train.ema_decay=1.5"),
        ("train.max_minutes=0", "train.max_minutes=0.0; use null or a number > 0"),
        ("loss.sigma.min=100", "loss.sigma.min=100.0 is outside the teacher's sigma range"),
    ],
)
def test_bad_values_are_named(override, message):
    cfg = compose_config("train", [override, "run_dir=unused"])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("optim.fused=maybe", "optim.fused=maybe; Value 'maybe' is not a valid bool"),
    ("train.max_steps=many", "train.max_steps=many; Value 'many' of type 'str' could not be converted to Integer"),
    ("train.no_such_key=1", "Could not override 'train.no_such_key'"),
    ("loss.guidance_scael=1", "Key 'guidance_scael' not in 'LossConfig'"),
])
def test_the_schema_refuses_wrong_types_and_unknown_keys_in_one_line(override, message, tmp_path, monkeypatch, capsys):
    """Refused by hydra while it composes, against teachers/schema.py; one line, exit 2, no run directory."""
    from conftest import run_cli
    from distill.__main__ import main

    code = run_cli(main, ["experiment=toy_gmm", override, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


REFERENCE_FILES = {  # the option of each group that restates its schema's defaults, with the reasons for them in comments
    "optim/adamw.yaml": "OptimConfig", "loss/dmd_regression.yaml": "LossConfig", "eval/toy.yaml": "ToyEvalConfig",
    "eval/fid.yaml": "FidEvalConfig", "teacher/mlp.yaml": "MlpTeacher", "teacher/unet.yaml": "UnetTeacher",
    "student/one_step.yaml": "StudentConfig",
}


@pytest.mark.parametrize(("path", "schema"), REFERENCE_FILES.items())
def test_reference_options_restate_their_schema_defaults(path, schema):
    """Defaults live in teachers/schema.py; a group's reference YAML may restate them beside their reasons, never differ."""
    from omegaconf import OmegaConf

    import teachers.schema
    from teachers.cli import CONFIG_DIR

    written = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / path))
    written.pop("defaults")
    defaults = OmegaConf.to_container(OmegaConf.structured(getattr(teachers.schema, schema)))

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    differ = {k: (v, dict(leaves(defaults)).get(k)) for k, v in leaves(written) if v != dict(leaves(defaults)).get(k)}
    assert not differ, differ
