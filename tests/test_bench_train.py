"""The training-step benchmark on tiny presets: every part timed, counted and summed; the step timed as the loop runs it."""
import json

import pytest

from distill.bench_train import bench_preset, main

TINY = ["data=digits", "debug=cpu_tiny_image"]
ALWAYS = {"student forward (no grad)", "student forward + backward", "fake-score forward + backward", "fake-score optimizer step",
          "student optimizer step", "teacher forward", "fake-score forward", "EMA update"}
GAN = {"GAN classifier forward + backward (discriminator)", "GAN classifier forward + backward (generator)"}


@pytest.mark.parametrize(("preset", "extra", "expected"), [
    ("mnist", [], ALWAYS),
    ("mnist_dmd2_4step", ["train.reuse_student_samples=true", "train.num_fake_steps_per_student_step=2"], ALWAYS | GAN | {"backward simulation"}),
])
def test_every_part_of_a_step_is_timed_and_the_sum_is_consistent(tmp_path, preset, extra, expected):
    result = bench_preset(preset, TINY + extra, repeats=2, run_dir=tmp_path / "run")
    parts = result["parts"]
    assert set(parts) == expected  # a part left untimed (or one too many) fails here
    assert all(v["ms"] > 0 and v["per_step"] >= 1 for v in parts.values())
    assert result["sum_of_parts_ms"] == pytest.approx(sum(v["ms"] * v["per_step"] for v in parts.values()))
    assert result["step_ms"] > 0 and result["step_over_sum"] == pytest.approx(result["step_ms"] / result["sum_of_parts_ms"])
    assert result["student_updates_per_s"] == pytest.approx(1000 / result["step_ms"]) and result["peak_memory_mb"] > 0
    n_fake = result["fake_steps_per_student_step"]
    assert parts["fake-score forward + backward"]["per_step"] == n_fake
    reused = "train.reuse_student_samples=true" in extra  # the first fake update trains on the last student samples
    if n_fake - reused > 0:
        assert parts["student forward (no grad)"]["per_step"] == n_fake - reused
    if "backward simulation" in parts:
        assert parts["backward simulation"]["per_step"] == n_fake - reused + 1


def test_the_command_writes_json_and_a_table(tmp_path):
    main(["mnist", *[f"--override={o}" for o in TINY], "--repeats", "1", "--out", str(tmp_path)])
    (result,) = json.loads((tmp_path / "bench_train.json").read_text())
    table = (tmp_path / "bench_train.md").read_text()
    assert result["preset"] == "mnist" and "| **whole step** |" in table and "Step / sum of parts" in table


def test_the_step_and_its_parts_are_timed_in_turn():
    """Rounds of every fn once (after each fn's warm-up calls), so a machine that slows down mid-benchmark slows them alike."""
    import torch

    from distill.bench_train import interleaved_ms

    calls = []
    ms = interleaved_ms({"step": lambda: calls.append("step"), "part": lambda: calls.append("part")}, repeats=3,
                        device=torch.device("cpu"), warmup=1)
    assert set(ms) == {"step", "part"} and all(v >= 0 for v in ms.values())
    assert calls == ["step", "part"] + ["step", "part"] * 3


@pytest.mark.parametrize("fused", [True, False])
def test_optim_fused_chooses_adamws_kernel(fused):
    """optim.fused=true asks torch for its fused AdamW; false leaves torch's default (not fused)."""
    import torch
    from omegaconf import OmegaConf

    from distill.build import make_optimizer

    optim = OmegaConf.create({"betas": [0.9, 0.999], "weight_decay": 0.0, "fused": fused})
    param = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer([param], 1e-3, optim)
    param.grad = torch.ones(3)
    opt.step()
    assert bool(opt.param_groups[0]["fused"]) is fused and float(param[0]) < 1
