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


def _image_run(path, experiment, scale, fid):
    path.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"loss": {"guidance_scale": scale}}), path / "config.yaml")
    (path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create([f"experiment={experiment}", f"loss.guidance_scale={scale}"]), path / ".hydra" / "overrides.yaml")
    entries = {"student_nfe1": {"nfe": 1, "fid": fid}, "teacher_heun_nfe35": {"nfe": 35, "fid": 5.0}}
    (path / "metrics.json").write_text(json.dumps(entries))


def test_collect_reads_overrides_sorts_jobs_by_number_and_plots(tmp_path):
    for job in range(11):
        _image_run(tmp_path / "sweep" / str(job), f"exp{job}", float(job), 10.0 + job)
    out, png = tmp_path / "table.md", tmp_path / "fid.png"
    main([str(tmp_path / "sweep"), "--keys", "experiment", "loss.guidance_scale", "--figures", "fid", "--samplers", "student_nfe1",
          "--out", str(out), "--plot", "loss.guidance_scale:fid", "--plot-out", str(png)])
    lines = out.read_text().splitlines()
    assert lines[2] == "| 0 | student_nfe1 | exp0 | 0 | 10 |"
    assert lines[-1] == "| 10 | student_nfe1 | exp10 | 10 | 20 |"  # after 9, not after 1
    assert len(lines) == 13 and png.stat().st_size > 0


def test_collect_rejects_a_plot_of_an_unlisted_key(tmp_path, capsys):
    import pytest

    _image_run(tmp_path / "sweep" / "0", "exp", 1.0, 3.0)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "sweep"), "--keys", "experiment", "--figures", "fid", "--plot", "loss.guidance_scale:fid"])
    assert "--plot loss.guidance_scale:fid" in capsys.readouterr().err


def test_collect_shows_where_a_time_capped_run_stopped(tmp_path):
    """log.<name> keys read the last train_log.jsonl record; a run without a log gets an empty cell."""
    _fake_run(tmp_path / "sweep" / "0", 1e-4, 1.0)
    _fake_run(tmp_path / "sweep" / "1", 1e-3, 2.0)
    records = [{"step": 25, "time/train_minutes": 0.5}, {"step": 41, "time/train_minutes": 0.75}]
    (tmp_path / "sweep" / "0" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "table.md"
    main([str(tmp_path / "sweep"), "--keys", "log.step", "log.time/train_minutes", "--figures", "fd",
          "--samplers", "student_nfe1", "--out", str(out)])
    assert out.read_text().splitlines()[2:] == ["| 0 | student_nfe1 | 41 | 0.75 | 1 |", "| 1 | student_nfe1 |  |  | 2 |"]


def test_collect_reads_nested_figures_and_intervals(tmp_path):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    entry = {"nfe": 1, "fid": 2.0, "fid_ci95": [1.812345, 2.25], "second_extractor": {"fid": 7.654321}}
    (run / "metrics.json").write_text(json.dumps({"student_nfe1": entry}))
    out = tmp_path / "table.md"
    main([str(tmp_path / "sweep"), "--figures", "fid", "fid_ci95", "second_extractor.fid", "--out", str(out)])
    assert out.read_text().splitlines()[2] == "| 0 | student_nfe1 | 2 | [1.812, 2.25] | 7.654 |"
