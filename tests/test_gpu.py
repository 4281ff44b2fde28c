"""On a CUDA device (`pytest -m gpu`): a DMD2 run trains and evaluates on the GPU, and sampling is timed to the end
of its kernels. CI has no GPU; run these where one is lent."""
import json

import pytest
import torch
from conftest import compose_config
from test_dmd2 import FOUR_SIGMAS
from test_image_smoke import tiny_overrides

from distill.loop import run
from eval.bench import benchmark
from eval.features import DomainClassifier, extract
from eval.fid import fid, fid_torchmetrics, stats_of
from eval.harness import timed_sampling
import teachers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_dmd2_gan_four_step_run_on_the_gpu(tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["experiment=mnist_dmd2_4step", "data=digits", "debug=cpu_tiny_image", "train.num_fake_steps_per_student_step=2",
                 FOUR_SIGMAS, f"run_dir={run_dir}", f"eval.cache_dir={tmp_path / 'cache'}"]
    metrics = run(compose_config("train", overrides))
    assert set(metrics) == {"teacher_heun_nfe3", "student_nfe4"}
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert {"loss/gan_generator", "loss/gan_discriminator", "loss/dmd"} <= log[-1].keys()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in log[-1].items() if k.startswith("loss"))
    student = teachers.load(run_dir / "student").cuda()
    assert next(student.parameters()).is_cuda


def test_timed_sampling_waits_for_the_kernels():
    noise, weight = torch.randn(2, 4096, 4096, device="cuda")
    _, seconds_per_sample = timed_sampling(lambda z, c: z @ weight @ weight @ weight, noise, batch_size=4096)
    # Three 4096^3 products are ~4e11 FLOP: at least ~1e-7 s per sample on any GPU; without the synchronize the
    # clock stops at the launch (~1e-9 s per sample).
    assert seconds_per_sample > 5e-8


def test_bench_on_the_gpu(tmp_path):
    run_dir = tmp_path / "run"
    run(compose_config("train", tiny_overrides(run_dir, tmp_path / "cache", "train.max_steps=1")))
    teacher, student = (teachers.load(run_dir / name).cuda() for name in ("teacher", "student"))
    figures = benchmark(teacher, student, [{"name": "heun", "num_steps": 4}], batch_size=64, repeats=2, device=torch.device("cuda"))
    assert figures["student_nfe1"]["device"] == "cuda" and figures["teacher_heun_nfe7"]["student_speedup"] > 1
    assert figures["student_nfe1"]["device_name"] == torch.cuda.get_device_name()


def test_torchmetrics_cross_check_on_the_gpu():
    """Features extracted on the GPU (NumPy on the host) give the same FID through clean-fid and torchmetrics."""
    extractor = DomainClassifier().eval().cuda()
    images_a = torch.rand(400, 1, 28, 28, device="cuda") * 2 - 1
    images_b = (torch.rand(400, 1, 28, 28, device="cuda") * 2 - 1) * 0.7 + 0.1
    features_a, features_b = extract(extractor, images_a), extract(extractor, images_b)
    ours = fid(stats_of(features_a), stats_of(features_b))
    assert abs(ours - fid_torchmetrics(features_a, features_b)) / ours < 1e-3
