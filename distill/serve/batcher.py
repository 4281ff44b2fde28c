"""Micro-batching: concurrent requests from all clients go to the model as one forward, in one worker thread.

A full batch (max_batch images) goes at once; a partial one waits at most max_wait_ms for more (Triton's dynamic
batcher and Ray Serve's @serve.batch work this way). The asyncio side only queues; the worker owns the model."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(RuntimeError):
    """The bounded queue is full: the client gets 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request's images: seeds (one per image) and labels (or None), and where its result goes."""

    seeds: list[int]
    labels: list[int] | None
    future: asyncio.Future
    enqueued_s: float = field(default_factory=time.perf_counter)
    started: bool = False
    cancelled: bool = False  # superseded or abandoned before it started: skipped

    @property
    def size(self) -> int:
        return len(self.seeds)


class MicroBatcher:
    """Queue (bounded at max_queue requests) -> batches of up to max_batch images -> run_batch(jobs) in one thread.

    run_batch returns one result per job, in order; it runs only in this batcher's single worker thread."""

    def __init__(self, run_batch: Callable[[list[Job]], list], max_batch: int = 16, max_wait_ms: float = 0.0, max_queue: int = 64):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[Job] = asyncio.Queue(max_queue)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="model")  # the one thread that touches the model
        self._carry: Job | None = None  # a job that did not fit the last batch: the next one starts with it
        self.batches = 0

    def submit(self, seeds: list[int], labels: list[int] | None) -> Job:
        """Queue a request; QueueFull when max_queue requests are already waiting."""
        job = Job(seeds, labels, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue.maxsize} requests are waiting") from None
        return job

    @property
    def depth(self) -> int:
        return self.queue.qsize() + (self._carry is not None)

    async def call(self, fn: Callable, *args):
        """fn(*args) in the worker thread, between batches (model reloads, warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def _next_job(self, timeout_s: float | None) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout_s is None:
            return await self.queue.get()
        if not self.queue.empty():
            return self.queue.get_nowait()
        if timeout_s <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def collect(self) -> list[Job]:
        """The next batch: the first live job, then more until max_batch images or max_wait_ms after the first."""
        batch, images, deadline = [], 0, None
        while True:
            job = await self._next_job(None if deadline is None else deadline - time.perf_counter())
            if job is None:
                return batch
            if job.cancelled or job.future.done():
                continue
            if batch and images + job.size > self.max_batch:
                self._carry = job
                return batch
            job.started = True
            batch.append(job)
            images += job.size
            deadline = deadline or time.perf_counter() + self.max_wait_s
            if images >= self.max_batch:
                return batch

    async def run(self) -> None:
        """Forever: collect a batch, run it in the worker thread, hand each job its own result."""
        while True:
            batch = await self.collect()
            try:
                results = await self.call(self.run_batch, batch)
            except Exception as err:  # noqa: BLE001  (a failed forward fails its requests, not the server)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            for job, result in zip(batch, results):
                if not job.future.done():  # the client may have gone
                    job.future.set_result(result)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
