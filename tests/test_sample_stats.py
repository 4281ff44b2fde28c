"""experiments/gpu/sample_stats.py: the class spread, ink and class-mix split of FID of a student's samples, one row per student."""
import functools

import pytest

from teachers.io import save_pretrained_atomic
from conftest import load_script as load, tiny_unet_denoiser

load_script = functools.partial(load, "experiments/gpu/sample_stats.py")


def test_one_row_per_student_with_every_sample_counted_once(tmp_path):
    student = save_pretrained_atomic(tiny_unet_denoiser(size=28), tmp_path / "student")
    table = load_script().main([str(student), str(student), "--num-samples", "30", "--out", str(tmp_path / "t.md")])
    rows = [line for line in table.splitlines() if line.startswith(f"| {student}")]
    real = next(line for line in table.splitlines() if line.startswith("| MNIST training split"))
    assert sum(int(c) for c in real.split("|")[3].split()) == 4500  # the 90% training split of 5,000
    assert float(real.split("|")[4]) == 0 and 0 <= float(rows[0].split("|")[4]) <= 1  # class TV vs the data itself: 0
    assert len(rows) == 2 and rows[0] == rows[1]  # a replay: same noise seed, same student, same batches: same row
    counts = [int(c) for c in rows[0].split("|")[3].split()]
    assert len(counts) == 10 and sum(counts) == 30
    assert (tmp_path / "t.md").read_text() == table
    # FID, the data at its own class mix, and at the data's mix: the training split against itself scores 0 on all.
    assert all(abs(float(cell)) < 1e-6 for cell in real.split("|")[7:10])
    assert all(float(cell) >= 0 for cell in rows[0].split("|")[7:10])


def test_a_non_positive_sample_count_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        load_script().main([str(tmp_path), "--num-samples", "0"])
    with pytest.raises(SystemExit):
        load_script().main([str(tmp_path), "--heun-steps", "0"])


def test_the_teacher_row_comes_from_its_heun_sampler(tmp_path):
    teacher = save_pretrained_atomic(tiny_unet_denoiser(size=28), tmp_path / "teacher")
    table = load_script().main([str(teacher), "--teacher", str(teacher), "--heun-steps", "2", "--num-samples", "8"])
    row = next(line for line in table.splitlines() if "(teacher_heun_nfe3)" in line)
    assert row.split("|")[2].strip() == "3"


@pytest.mark.slow  # CI time (issue 34 added flow-teacher tests); make test-slow runs it
def test_each_step_adds_a_row_per_prefix_of_a_k_step_students_sigmas(tmp_path):
    import json

    from eval.harness import STUDENT_FILE

    student = save_pretrained_atomic(tiny_unet_denoiser(size=28), tmp_path / "student")
    (student / STUDENT_FILE).write_text(json.dumps({"sigmas": [80.0, 5.0, 1.0]}))
    table = load_script().main([str(student), "--each-step", "--num-samples", "8"])
    rows = [line.split("|") for line in table.splitlines() if line.startswith(f"| {student}")]
    assert [row[2].strip() for row in rows] == ["1", "2", "3"]  # NFE: the first 1, 2, then all 3 sigmas
    assert rows[-1][1].strip() == str(student)  # the last row is the student's own sampler
    plain = load_script().main([str(student), "--num-samples", "8"])
    assert [line for line in plain.splitlines() if line.startswith(f"| {student}")] == ["|".join(rows[-1])]


def test_a_class_conditional_student_samples_evaluations_uniform_labels(tmp_path):
    student = save_pretrained_atomic(tiny_unet_denoiser(size=28, num_classes=10), tmp_path / "student")
    table = load_script().main([str(student), "--num-samples", "8"])
    assert any(line.startswith(f"| {student}") for line in table.splitlines())
