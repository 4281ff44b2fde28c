"""The default main job meets the issue's quality target on the ring (minutes: marked slow)."""
import pytest

from conftest import compose_config
from distill.loop import run


@pytest.mark.slow
def test_default_job_matches_teacher_mode_recall_and_fd(tmp_path):
    metrics = run(compose_config("train", ["experiment=toy_gmm", f"run_dir={tmp_path}"]))
    teacher, student = metrics["teacher_heun_nfe35"], metrics["student_nfe1"]
    assert student["mode_recall"] == teacher["mode_recall"] == 1.0
    assert student["fd"] <= 1.5 * teacher["fd"]
