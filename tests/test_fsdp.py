"""FSDP2 (accelerate's fully_shard) for the student and the fake score: the same training as DDP, checkpoints of
whole tensors that resume without FSDP. Two CPU processes over gloo, where torch runs FSDP2 on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY = ["experiment=toy_gmm", "debug=cpu_tiny", "deterministic=true", "train.max_steps=6", "train.checkpoint_every=3",
        "train.ema_decay=0.9", "loss=dmd2", "eval.num_samples=64"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cpu_config(tmp_path: Path, name: str) -> Path:
    """configs/accelerate/<name>.yaml on CPU processes (use_cpu: true); FSDP units of 500 parameters (the toy
    networks have a few thousand, so some submodules are units of their own)."""
    text = (REPO / "configs" / "accelerate" / f"{name}.yaml").read_text()
    path = tmp_path / f"{name}_cpu.yaml"
    path.write_text(text.replace("use_cpu: false", "use_cpu: true").replace("fsdp_min_num_params: 1000000", "fsdp_min_num_params: 500"))
    return path


def launch(config: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [ACCELERATE, "launch", "--config_file", str(config), "--num_processes", "2", "-m", "distill", *overrides,
           f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=ENV)


def test_whole_tensors_round_trip_through_a_sharded_layout():
    """distill.sharding on a one-process mesh: a full tensor laid out as a DTensor parameter, and gathered back."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from distill.sharding import full, full_optimizer_state, load_full_optimizer_state, shaped_like

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        value = torch.arange(12.0).reshape(4, 3)
        laid_out = shaped_like(value, param)
        assert laid_out.placements == param.placements and torch.equal(full(laid_out), value)
        assert shaped_like(value, torch.zeros(4, 3)) is value  # plain parameters take plain tensors
        optimizer = torch.optim.AdamW([param], lr=0.1)
        param.grad = distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)])
        optimizer.step()
        saved = full_optimizer_state(optimizer)
        moment = saved["state"][0]["exp_avg"]
        assert not isinstance(moment, DTensor) and moment.shape == (4, 3)
        again = torch.optim.AdamW([param], lr=0.1)
        load_full_optimizer_state(again, saved)
        torch.testing.assert_close(full(again.state[param]["exp_avg"]), full(optimizer.state[param]["exp_avg"]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # three 2-process runs and one more: about 3 minutes on 2 CPU cores
def test_fsdp_trains_as_ddp_does_and_its_checkpoint_resumes_without_it(tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    done = launch(cpu_config(tmp_path, "fsdp"), fsdp, *TINY)
    assert done.returncode == 0, done.stderr[-4000:]
    done = launch(cpu_config(tmp_path, "cpu"), ddp, *TINY)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("student", "fake_score", "ema", "gan_head", "student_optimizer", "fake_optimizer"):
        a, b = (load_file(run / "checkpoints" / "step-6" / f"{name}.safetensors") for run in (fsdp, ddp))
        assert a.keys() == b.keys(), name
        for key in a:  # the same updates: gradients averaged by a reduce-scatter instead of an all-reduce
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
    assert json.loads((fsdp / "metrics.json").read_text())["student_nfe1"]["num_processes"] == 2
    # The FSDP checkpoint resumes in one process without FSDP, and on two with it (another process count: one).
    resumed = subprocess.run([sys.executable, "-m", "distill", *TINY, "train.max_steps=8", f"hydra.run.dir={fsdp}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (fsdp / "train_log.jsonl").read_text().splitlines()]
    assert steps[-2:] == [7, 8] and (fsdp / "checkpoints" / "step-8" / "COMPLETE").is_file()


@pytest.mark.slow  # two 2-process runs of a tiny UNet, about 2 minutes on 2 CPU cores
def test_fsdp_trains_a_unet_with_the_gan_head_as_ddp_does(tmp_path):
    """The critic reads the fake score's bottleneck by stopping its forward there: a sharded unit that never finishes
    its forward still gathers, and reduce-scatters its gradients."""
    image = ["experiment=mnist", "data=digits", "debug=cpu_tiny_image", "loss=dmd2", "deterministic=true", "train.max_steps=3",
             "eval.num_samples=64", f"eval.cache_dir={tmp_path / 'cache'}"]
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    for config, run_dir in ((cpu_config(tmp_path, "fsdp"), fsdp), (cpu_config(tmp_path, "cpu"), ddp)):
        done = launch(config, run_dir, *image)
        assert done.returncode == 0, done.stderr[-4000:]
    for name in ("student", "fake_score", "ema", "gan_head"):
        a, b = (load_file(run / "checkpoints" / "step-3" / f"{name}.safetensors") for run in (fsdp, ddp))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
