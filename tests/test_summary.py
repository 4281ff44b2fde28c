"""A run ends with its result on stdout: each sampler's FID with its interval and its ratio to the teacher's full
sampler in each feature space (or the toy figures), images/s against the teacher's, what to open, how to serve it."""
from conftest import compose_config

from distill.loop import run
from distill.summary import summary_lines

IMAGE_METRICS = {
    "student_nfe1": {"nfe": 1, "fid": 4.2, "fid_ci95": [3.6, 4.8], "seconds_per_sample": 0.001,
                     "second_extractor": {"fid": 6.0}},
    "teacher_heun_nfe35": {"nfe": 35, "fid": 2.1, "fid_ci95": [1.9, 2.7], "seconds_per_sample": 0.035,
                           "second_extractor": {"fid": 4.0}},
    "teacher_euler_nfe5": {"nfe": 5, "fid": 9.0, "seconds_per_sample": 0.005},
}


def test_each_sampler_gets_its_interval_and_its_ratio_to_the_full_sampler(tmp_path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "model_index.json").write_text("{}")
    lines = summary_lines(IMAGE_METRICS, tmp_path)
    student = next(line for line in lines if "student_nfe1" in line)
    assert "FID 4.2 [3.6, 4.8] = 2.00x the teacher's" in student and "second feature space 6 = 1.50x" in student
    assert "1,000 images/s (35.0x the teacher's)" in student
    assert lines[1].strip().startswith("teacher_")  # the teachers first
    assert "4.29x the teacher's" in next(line for line in lines if "teacher_euler_nfe5" in line)  # vs Heun-35, the full one
    assert lines[-1] == f"Serve: python -m distill.serve {tmp_path}"


def test_a_toy_run_prints_its_result_last(tmp_path, capsys):
    run(compose_config("train", ["debug=cpu_tiny", f"run_dir={tmp_path}"]))
    out = capsys.readouterr().out.strip().splitlines()
    result = out.index(f"Result ({tmp_path / 'metrics.json'}):")
    assert any(line.strip().startswith("student_nfe1") and "the teacher's" in line for line in out[result:])
    assert out[-1].startswith("Open: ") and "grids/step-" in out[-1]
