"""Sharded evaluation: each process samples whole batches of the seeds; two processes give one process's figures."""
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import compose_config, tiny_unet_denoiser

from eval.harness import student_sample_fn, timed_sampling
from eval.shard import Shard
from teachers.io import save_pretrained_atomic

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("num, batch_size, processes", [(64, 32, 2), (2000, 500, 2), (100, 32, 3), (10, 500, 2), (7, 2, 4)])
def test_shards_are_whole_batches_that_cover_the_seeds_once(num, batch_size, processes):
    spans = [Shard(rank, processes).span(num, batch_size) for rank in range(processes)]
    covered = [i for s in spans for i in range(s.start, s.stop)]
    assert covered == list(range(num))  # in rank order, each seed once
    assert all(s.start % batch_size == 0 for s in spans)  # every batch is one a single process makes


def test_a_k_step_student_makes_the_same_images_split_over_processes():
    student = tiny_unet_denoiser()
    noise = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole_fn = student_sample_fn(student, [80.0, 5.0, 0.5], seed=3)
    whole, _ = timed_sampling(whole_fn.fn, noise, 4, reseed=whole_fn.reseed)
    parts = []
    for rank in range(2):
        fn, span = student_sample_fn(student, [80.0, 5.0, 0.5], seed=3), Shard(rank, 2).span(len(noise), 4)
        parts.append(timed_sampling(fn.fn, noise[span], 4, first=span.start, reseed=fn.reseed)[0])
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole[:4], whole[4:8], atol=1e-3)  # each batch its own re-noising


FIGURES = ("fid", "fid_vs_teacher", "fid_torchmetrics", "kid", "precision", "recall", "class_tv")


@pytest.mark.slow  # about 40 s (two interpreters on 2 cores); CI holds python -m distill's sharded evaluation to the
# 1-process figures instead (tests/test_smoke.py::test_two_process_run_with_torchrun)
def test_two_process_evaluation_equals_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m eval` of a stored teacher's two samplers: the 1-process figures (both feature
    spaces), num_processes 2, every seed's PNG."""
    from eval.run import run as evaluate

    teacher = save_pretrained_atomic(tiny_unet_denoiser(), tmp_path / "teacher")
    overrides = ["data=digits", "eval=fid", "teacher=unet", f"teacher.path={teacher}", f"eval.cache_dir={tmp_path / 'cache'}",
                 "eval.num_samples=96", "eval.batch_size=32", "eval.teacher_samplers=[{name:heun,num_steps:2},{name:euler,num_steps:1}]",
                 "eval.classifier_fit={steps:5,batch_size:32,lr:2.0e-3}", "eval.bootstrap_resamples=20", "eval.kid_subsets=10",
                 "eval.cache_teacher_samples=false", "eval.second_classifier=auto"]
    one = evaluate(compose_config("eval", [*overrides, f"run_dir={tmp_path / 'one'}"]))
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "eval", *overrides, f"hydra.run.dir={tmp_path / 'two'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert set(two) == set(one) == {"teacher_heun_nfe3", "teacher_euler_nfe1"}
    for label in one:
        assert (one[label]["num_processes"], two[label]["num_processes"]) == (1, 2)
        for entry_one, entry_two in ((one[label], two[label]), (one[label]["second_extractor"], two[label]["second_extractor"])):
            for name in FIGURES:
                if name in entry_one:
                    assert entry_two[name] == pytest.approx(entry_one[name], rel=1e-6, abs=1e-12), (label, name)
        assert sorted(p.name for p in (tmp_path / "two" / "samples" / label).iterdir()) == [f"{i:06d}.png" for i in range(96)]
    assert one["teacher_euler_nfe1"]["fid"] != one["teacher_heun_nfe3"]["fid"]  # two samplers, two sets of images


def test_every_process_of_a_launch_resolves_one_run_directory(monkeypatch):
    """${launch_time:...} is the launcher's start (the parent of every process it starts), not each process's clock."""
    import psutil

    from teachers.cli import launch_time

    monkeypatch.setenv("WORLD_SIZE", "2")
    parent = psutil.Process(os.getppid()).create_time()
    assert launch_time("%s") == datetime.fromtimestamp(parent).strftime("%s")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert abs(int(launch_time("%s")) - time.time()) < 5  # alone: hydra's ${now:...}


class ThreadShard(Shard):
    """Two processes played by two threads of this one: gather is a barrier over a shared board."""

    board: list = [None, None]
    barrier = threading.Barrier(2)

    def gather(self, part) -> list:
        self.board[self.rank] = part
        self.barrier.wait()
        out = list(self.board)
        self.barrier.wait()
        return out


def test_prompt_embeddings_made_in_shares_equal_one_processs(tmp_path):
    """eval's text conditions on two processes: each embeds a contiguous share of the prompts; both get every row."""
    from conftest import tiny_sd_denoiser
    from teachers.conditions import text_conditions

    teacher = tiny_sd_denoiser()
    prompts = [f"a handwritten digit {i}" for i in range(7)]  # 4 + 3 rows
    whole = text_conditions(teacher, prompts, None, None).table
    tables, embedded_by = [None, None], {}
    encode = teacher.encode_condition

    def recorded(share: list[str]):
        embedded_by[threading.current_thread().name] = list(share)
        return encode(share)

    teacher.encode_condition = recorded

    def process(rank: int) -> None:
        tables[rank] = text_conditions(teacher, prompts, None, tmp_path / "cache", ThreadShard(rank, 2)).table

    threads = [threading.Thread(target=process, args=(rank,), name=f"rank{rank}") for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert embedded_by == {"rank0": prompts[:4], "rank1": prompts[4:]}  # each its own share, not the whole set
    for table in tables:
        torch.testing.assert_close(table, whole, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "cache" / "text_embeddings").iterdir())) == 1  # written once, by the main process
    torch.testing.assert_close(text_conditions(teacher, prompts, None, tmp_path / "cache").table, whole, rtol=1e-5, atol=1e-6)
