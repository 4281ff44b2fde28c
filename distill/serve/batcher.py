"""Micro-batching: concurrent requests from all clients go to the model as one forward, in one worker thread.

A full batch (max_batch images) goes at once; a partial one waits at most max_wait_ms for more (Triton's dynamic
batcher and Ray Serve's @serve.batch work this way), and only when the last batch held several requests and a client
answered in the last RECENT_S seconds has none in it yet: it is about to send again. So a lone client never waits (nor
does one that opens a new connection per request), and N clients do not settle into two cohorts that alternate
half-size batches (measured: 16 clients ran as batches of 8). The asyncio side only queues; the worker owns the model."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


RECENT_S = 0.5  # a client answered this recently is expected back (a page or a script sends its next request at once)


class QueueFull(RuntimeError):
    """The bounded queue is full: the client gets 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request's images: seeds (one per image) and labels (or None), and where its result goes."""

    seeds: list[int]
    labels: list[int] | None
    future: asyncio.Future
    client: str = ""  # the connection it came on: whom a partial batch may wait for
    enqueued_s: float = field(default_factory=time.perf_counter)
    started: bool = False
    cancelled: bool = False  # superseded or abandoned before it started: skipped

    @property
    def size(self) -> int:
        return len(self.seeds)


class MicroBatcher:
    """Queue (bounded at max_queue requests) -> batches of up to max_batch images -> run_batch(jobs) in one thread.

    run_batch returns one result per job, in order; it runs only in this batcher's single worker thread."""

    def __init__(self, run_batch: Callable[[list[Job]], list], max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 64):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[Job] = asyncio.Queue(max_queue)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="model")  # the one thread that touches the model
        self._carry: Job | None = None  # a job that did not fit the last batch: the next one starts with it
        self.answered: dict[str, float] = {}  # client -> when its last request was answered (perf_counter seconds)
        self.last_batch_jobs = 0
        self.batches = 0

    def submit(self, seeds: list[int], labels: list[int] | None, client: str = "") -> Job:
        """Queue a request; QueueFull when max_queue requests are already waiting."""
        job = Job(seeds, labels, asyncio.get_running_loop().create_future(), client)
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

    def forget_old(self) -> None:
        """Drop clients not answered in the last RECENT_S seconds (one HTTP connection per request adds one each)."""
        now = time.perf_counter()
        self.answered = {c: t for c, t in self.answered.items() if now - t < RECENT_S}

    def expected(self, batch: list[Job]) -> bool:
        """Whether the last batch was shared and a client answered in the last RECENT_S seconds has no request in
        this batch yet."""
        if self.last_batch_jobs < 2:
            return False
        self.forget_old()
        present = {job.client for job in batch}
        return any(c not in present for c in self.answered)

    async def collect(self) -> list[Job]:
        """The next batch: the first live job, then what is queued, then what arrives within max_wait_ms of the first
        while a recently answered client is missing from it, up to max_batch images."""
        batch, images, deadline = [], 0, None
        while True:
            wait_s = None if deadline is None else (deadline - time.perf_counter() if self.expected(batch) else 0.0)
            job = await self._next_job(wait_s)
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
            self.last_batch_jobs = len(batch)
            answered_at = time.perf_counter()
            if len(self.answered) > 1024:
                self.forget_old()
            for job, result in zip(batch, results):
                self.answered[job.client] = answered_at
                if not job.future.done():  # the client may have gone
                    job.future.set_result(result)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
