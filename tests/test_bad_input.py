"""Bad input on the command line: one line on stderr naming the value, exit 2, no training started."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.weights=[0.5,0.6]", "data.means=[[0,0],[1,1]]", "data.stds=[0.1,0.1]"], "data.weights sum to 1.1"),
        (["data.weights=[1.5,-0.5]", "data.means=[[0,0],[1,1]]", "data.stds=[0.1,0.1]"], "data.weights contains -0.5"),
        (["data.means=[[0,0],[1,1,1]]", "data.stds=[0.1,0.1]", "data.weights=[0.5,0.5]"], r"dimensions [2, 3]"),
        (["data.means=[[0,0],[1,1]]", "data.stds=[0.1,-0.2]", "data.weights=[0.5,0.5]"], "data.stds contains -0.2"),
        (["experiment=toy_ring99"], "unknown experiment preset 'toy_ring99'; allowed: "),
        (["teacher.path=/nonexistent/teacher"], "teacher.path=/nonexistent/teacher: no such folder"),
    ],
)
def test_bad_input_exits_before_training(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "distill", *([] if "experiment" in overrides[0] else ["experiment=toy_gmm"]), "debug=cpu_tiny", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (run_dir / "teacher").exists() and not (run_dir / "checkpoints").exists()
