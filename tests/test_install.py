"""Installed, not just cloned: the wheel carries the hydra configs (and the page, the zoo), so its console scripts
train and evaluate from any directory, and a user's own presets come from a config directory of theirs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_PRESET = "# @package _global_\ndefaults:\n  - toy_gmm\n  - _self_\nseed: 7\n"


def test_the_wheels_console_scripts_run_from_another_directory(tmp_path):
    source, wheels, site, here = tmp_path / "source", tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    # A copy of the checkout: building writes build/ and *.egg-info into the source tree.
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "outputs", "multirun", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (here / "mine" / "experiment").mkdir(parents=True)
    (here / "mine" / "experiment" / "mine.yaml").write_text(USER_PRESET)
    env = os.environ | {"PYTHONPATH": str(site)}  # the wheel's packages ahead of the repository's editable install

    def run(*args):
        done = subprocess.run([*args], cwd=here, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    where = run(sys.executable, "-c", "import distill, teachers.cli; print(distill.__file__); print(teachers.cli.CONFIG_DIR)")
    assert all(line.startswith(str(site)) for line in where.stdout.split())
    run(str(site / "bin" / "distill"), "--config-dir", "mine", "experiment=mine", "debug=cpu_tiny", "hydra.run.dir=run")
    assert (here / "run" / "metrics.json").is_file() and "seed: 7" in (here / "run" / "config.yaml").read_text()
    run(str(site / "bin" / "distill-eval"), "experiment=toy_gmm", "teacher.path=run/teacher", "student_path=run/student",
        "eval.num_samples=500", "hydra.run.dir=ev")
    assert "student_nfe1" in json.loads((here / "ev" / "metrics.json").read_text())
