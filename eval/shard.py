"""One evaluation over the processes of a run: each process samples a contiguous run of whole batches of the seeds,
and the parts are gathered in rank order, so seed i makes the same image on any process count and the figures are
computed once, on the main process, from every sample."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Shard:
    """This process's part of an evaluation: process `rank` of `num_processes` (0 of 1: the whole of it)."""

    rank: int = 0
    num_processes: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def span(self, num: int, batch_size: int) -> slice:
        """This process's items of `num`: whole batches of batch_size, so every batch is the one a single process makes."""
        batches = -(-num // batch_size)
        first, last = batches * self.rank // self.num_processes, batches * (self.rank + 1) // self.num_processes
        return slice(min(first * batch_size, num), min(last * batch_size, num))

    def gather(self, part) -> list:
        """Every process's part (any picklable object), in rank order, on every process."""
        if self.num_processes == 1:
            return [part]
        from accelerate.utils import gather_object

        return gather_object([part])

    def cat(self, part: np.ndarray | None) -> np.ndarray | None:
        """The processes' arrays (rows) concatenated in rank order; None stays None."""
        if part is None:
            return None
        return np.concatenate(self.gather(part))

    def mean(self, value: float) -> float:
        """The mean of a figure over processes (each process's seconds per sample)."""
        return float(np.mean(self.gather(value)))

    def barrier(self) -> None:
        if self.num_processes > 1:
            torch.distributed.barrier()

    def main_first(self, make):
        """make() on the main process, then on the others: the main process writes a cache (a trained classifier,
        reference statistics) that the others then read instead of making it again."""
        if not self.main:
            self.barrier()
        out = make()
        if self.main:
            self.barrier()
        return out


def launched_shard() -> tuple[Shard, torch.device | None]:
    """The shard of a process started by torchrun or `accelerate launch` (WORLD_SIZE > 1), with its device; (whole,
    None) when started alone. The process group is accelerate's (gloo on the CPU, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard(), None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes), state.device
