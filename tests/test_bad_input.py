"""Bad input on the command line: one line on stderr naming the value, exit 2, no training started. The cases run the
entry point in this process (the same code the console script runs); one runs as a real process."""
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from distill.__main__ import main

REPO = Path(__file__).resolve().parent.parent
CASES = [
    (["data.weights=[0.5,0.6]", "data.means=[[0,0],[1,1]]", "data.stds=[0.1,0.1]"], "data.weights sum to 1.1"),
    (["data.weights=[1.5,-0.5]", "data.means=[[0,0],[1,1]]", "data.stds=[0.1,0.1]"], "data.weights contains -0.5"),
    (["data.means=[[0,0],[1,1,1]]", "data.stds=[0.1,0.1]", "data.weights=[0.5,0.5]"], r"dimensions [2, 3]"),
    (["data.means=[[0,0],[1,1]]", "data.stds=[0.1,-0.2]", "data.weights=[0.5,0.5]"], "data.stds contains -0.2"),
    (["experiment=toy_ring99"], "unknown experiment preset 'toy_ring99'; allowed: "),
    (["teacher.path=/nonexistent/teacher"], "teacher.path=/nonexistent/teacher: no such folder"),
]


def argv_of(overrides: list[str], run_dir: Path) -> list[str]:
    return [*([] if "experiment" in overrides[0] else ["experiment=toy_gmm"]), "debug=cpu_tiny", *overrides, f"hydra.run.dir={run_dir}"]


def assert_refused(code: int, stderr: str, message: str, run_dir: Path) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (run_dir / "teacher").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize(("overrides", "message"), CASES)
def test_bad_input_exits_before_training(tmp_path, overrides, message, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code = run_cli(main, argv_of(overrides, run_dir), monkeypatch)
    assert_refused(code, capsys.readouterr().err, message, run_dir)


def test_the_console_process_itself_exits_2_with_one_line(tmp_path):
    overrides, message = CASES[0]
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "distill", *argv_of(overrides, run_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert_refused(done.returncode, done.stderr, message, run_dir)


@pytest.mark.parametrize(("environ", "overrides", "message"), [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, [], "accelerate launch with DeepSpeed (ACCELERATE_USE_DEEPSPEED=true"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [], "accelerate launch with FSDP version 1 (FSDP_VERSION"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, ["lora.rank=4"], "lora.rank=4 under FSDP is not supported"),
])
def test_an_unsupported_accelerate_config_is_refused_by_name(tmp_path, environ, overrides, message, monkeypatch, capsys):
    """What `accelerate launch --config_file ...` sets in each process: refused before any work."""
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    run_dir = tmp_path / "run"
    code = run_cli(main, argv_of(["seed=0", *overrides], run_dir), monkeypatch)
    assert_refused(code, capsys.readouterr().err, message, run_dir)
