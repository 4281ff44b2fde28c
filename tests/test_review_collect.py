"""experiments/review/collect.py: the verdict per feature space comes from the intervals, never from FID alone."""
import functools
import json

from conftest import load_script as load

load_script = functools.partial(load, "experiments/review/collect.py")


def entry(fid, lo, hi, second=None):
    out = {"nfe": 1, "fid": fid, "fid_ci95": [lo, hi], "kid": 0.5, "kid_std": 0.1, "precision": 0.9, "recall": 0.8,
           "feature_extractor": "a", "num_samples": 100, "seed": 1, "reference": "r"}
    return out | ({"second_extractor": second} if second else {})


def test_verdicts_follow_the_intervals_in_each_space(tmp_path):
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    second_student, second_teacher = entry(8.0, 7.5, 9.0), entry(7.0, 6.0, 7.4)
    second_student["feature_extractor"] = second_teacher["feature_extractor"] = "b"
    metrics = {"teacher_heun_nfe35": entry(2.3, 2.1, 2.6, second_teacher) | {"nfe": 35},
               "student_nfe1": entry(1.9, 1.7, 2.2, second_student)}
    (run / "metrics.json").write_text(json.dumps(metrics))
    load_script().main([str(tmp_path / "runs"), str(tmp_path / "t.md")])
    row = (tmp_path / "t.md").read_text().splitlines()[2]
    # ahead on FID in space A (1.9 < 2.3) but the intervals overlap; behind in space B beyond the intervals
    assert "| within error bars |" in row and row.rstrip(" |").endswith("student behind")
    assert load_script().verdict(entry(1.0, 0.9, 1.1), entry(2.0, 1.8, 2.2)) == "student ahead"
