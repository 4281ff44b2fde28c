"""Issue 38: a bad config is refused before the heavy imports. The refusals, `--help` and `--cfg job` import no torch
(a module check, not a timing: `python -m distill.bench_config` measures the seconds); the torch-free DDPM sigma range
agrees with diffusers' table."""
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import SAMPLER_NAMES
from eval.samplers import SAMPLERS
from teachers.checks import ddpm_sigma_range
from teachers.vp import sigma_range

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import sys
sys.argv = {argv!r}
from {module} import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = [m for m in ("torch", "diffusers", "transformers", "accelerate", "datasets") if m in sys.modules]
print("HEAVY", heavy, "CODE", code)
"""


def imports_after(module: str, argv: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=argv)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return done.stdout.strip().splitlines()[-1] + " | " + done.stderr.strip()


@pytest.mark.parametrize(("module", "argv", "code"), [
    ("distill.__main__", ["distill", "train.batch_size=0"], 2),  # the demo: a VP teacher from the zoo
    ("distill.__main__", ["distill", "loss.sigma.min=1e-5"], 2),  # its DDPM table's sigma range, without torch
    ("distill.__main__", ["distill", "data.weights=[0.7,0.6]"], 2),  # a key the image data does not have
    ("distill.__main__", ["distill", "experiment=toy_gmm", "data.weights=[0.7,0.6]", "data.means=[[0,0],[1,1]]", "data.stds=[1,1]"], 2),
    ("distill.__main__", ["distill", "--cfg", "job"], 0),
    ("eval.__main__", ["eval", "--cfg", "job"], 0),
    ("teachers.train", ["teachers.train", "train.max_steps=0"], 2),
    ("teachers.train", ["teachers.train", "--cfg", "job"], 0),
])
def test_refusals_and_answers_import_no_torch(module, argv, code, tmp_path):
    said = imports_after(module, [*argv, f"hydra.run.dir={tmp_path}"] if "--cfg" not in argv else argv)
    assert said.startswith(f"HEAVY [] CODE {code}"), said
    if code == 2:
        assert said.count("error: ") == 1, said


@pytest.mark.parametrize("scheduler", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid", "num_train_timesteps": 200},
    {"trained_betas": [0.01, 0.02, 0.2, 0.5]},
])
def test_the_torch_free_ddpm_range_is_diffusers_table(scheduler):
    light, table = ddpm_sigma_range(scheduler, {}), sigma_range(scheduler, {})
    assert light == pytest.approx(table, rel=1e-3)  # the checks' tolerance (distill.config.SIGMA_TOLERANCE)
    assert ddpm_sigma_range(scheduler, {"sigma_max": 80.0})[1] == 80.0


def test_a_zero_terminal_snr_schedule_is_left_to_the_table():
    assert ddpm_sigma_range({"beta_schedule": "linear", "rescale_betas_zero_snr": True}, {}) is None


def test_the_checked_sampler_names_are_the_samplers():
    assert set(SAMPLER_NAMES) == set(SAMPLERS)
