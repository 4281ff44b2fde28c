"""The collect command turns a fabricated sweep folder into the expected table."""
import json

from omegaconf import OmegaConf

from eval.collect import main


def _fake_run(path, fake_lr, fd):
    path.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"optim": {"fake_lr": fake_lr}}), path / "config.yaml")
    entry = {"nfe": 1, "fd": fd, "mmd": 0.5, "mode_recall": 1.0, "mode_weight_error": 0.25, "off_mode_share": 0.125}
    (path / "metrics.json").write_text(json.dumps({"student_nfe1": entry, "teacher_heun_nfe35": {**entry, "nfe": 35}}))


def test_collect_writes_the_expected_table(tmp_path):
    _fake_run(tmp_path / "sweep" / "0", 1e-4, 0.123456)
    _fake_run(tmp_path / "sweep" / "1", 1e-3, 2.0)
    out = tmp_path / "table.md"
    main([str(tmp_path / "sweep"), "--keys", "optim.fake_lr", "--figures", "nfe", "fd", "--samplers", "student_nfe1", "--out", str(out)])
    assert out.read_text() == (
        "| run | sampler | optim.fake_lr | nfe | fd |\n"
        "|---|---|---|---|---|\n"
        "| 0 | student_nfe1 | 0.0001 | 1 | 0.1235 |\n"
        "| 1 | student_nfe1 | 0.001 | 1 | 2 |\n"
    )
