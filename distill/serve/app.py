"""The preview server's FastAPI app: the page at /, its WebSocket at /ws, POST /generate for scripts, GET /health.

The asyncio side only parses, limits, queues and answers; the batcher's one worker thread owns the model."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from distill.serve.batcher import Job, MicroBatcher, QueueFull
from distill.serve.limits import GenerateRequest, Limits, RequestError, TokenBucket, check_request, parse_request
from distill.serve.model import PreviewModel, encode_png, grid
from distill.serve.source import LoadedStudent, StudentSource

log = logging.getLogger("distill.serve")
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
RETRY_AFTER_S = 1
OUTBOX_SIZE = 8  # replies waiting for a WebSocket client; beyond it (a client that does not read) they are dropped


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and limits (the CLI's flags)."""

    limits: Limits = field(default_factory=Limits)
    max_batch: int = 16
    max_wait_ms: float = 5.0     # only for clients just answered that are missing from the batch (batcher.py)
    device: str = "cpu"
    reload_every_s: float = 2.0   # a run directory is checked this often for a newer sealed checkpoint
    compile: bool = False         # torch.compile the student (warm-up compiles it before the first user)
    warmup: bool = True


@dataclass(frozen=True)
class Rendered:
    """One request's answer: its PNG, and the wall milliseconds its batch took in the worker."""

    png: bytes
    model_ms: float
    batch_images: int
    version: str


class Preview:
    """The served student, its batcher and its source; what the endpoints share."""

    def __init__(self, source: StudentSource, student: LoadedStudent, settings: ServeSettings):
        self.source, self.settings = source, settings
        self.model = self._model(student)
        self.batcher = MicroBatcher(self.render, settings.max_batch, settings.max_wait_ms, settings.limits.max_queue)
        self.buckets: dict[str, TokenBucket] = {}

    def _model(self, student: LoadedStudent) -> PreviewModel:
        return PreviewModel(student, self.settings.device, compile=self.settings.compile)

    def render(self, jobs: list[Job]) -> list[Rendered]:
        """In the worker thread: one forward for every image of the batch, then each job's own grid as a PNG."""
        model, start = self.model, time.perf_counter()
        seeds = [seed for job in jobs for seed in job.seeds]
        labels = None if model.num_classes is None and not model.text_to_image else [label for job in jobs for label in job.labels]
        images = model.generate(seeds, labels)
        model_ms, out, first = (time.perf_counter() - start) * 1000, [], 0
        for job in jobs:
            out.append(Rendered(encode_png(grid(images[first:first + job.size])), model_ms, len(seeds), model.student.version))
            first += job.size
        return out

    def swap(self, student: LoadedStudent) -> None:
        """In the worker thread, between batches: serve a newly loaded student."""
        model = self._model(student)
        if self.settings.warmup:
            model.warm_up(self.settings.max_batch)
        self.model = model

    def submit(self, request: GenerateRequest, client: str) -> Job:
        """Check a parsed request against the served student and queue it (RequestError 422, QueueFull)."""
        check_request(request, self.settings.limits, self.model.num_classes, self.model.text_to_image)
        seeds = [request.seed + i for i in range(request.num_images)]
        label = (request.prompt or "") if self.model.text_to_image else request.label  # a text student's "label" is its prompt
        labels = None if label is None else [label] * request.num_images
        return self.batcher.submit(seeds, labels, client)

    def allow(self, client: str) -> bool:
        """The client's token bucket (429 when empty); the table is bounded."""
        if client not in self.buckets and len(self.buckets) >= 10_000:
            self.buckets.clear()
        limits = self.settings.limits
        return self.buckets.setdefault(client, TokenBucket(limits.rate_per_s, limits.burst)).take()

    def health(self) -> dict:
        model = self.model
        return {
            "status": "ok", "student": self.source.spec, "kind": self.source.kind, "version": model.student.version,
            "device": str(model.device), "nfe": model.nfe, "shape": list(model.shape), "num_classes": model.num_classes,
            "text_to_image": model.text_to_image, "queue_depth": self.batcher.depth, "batches": self.batcher.batches,
            "default_prompt": (model.student.prompts[:1] or ("",))[0] if model.text_to_image else None,
            "max_images": self.settings.limits.max_images, "max_batch": self.settings.max_batch,
        }

    async def watch(self) -> None:
        """A run directory: load each newer sealed checkpoint off the worker, then swap it in between batches."""
        while True:
            await asyncio.sleep(self.settings.reload_every_s)
            loaded = await asyncio.to_thread(self.source.reload_if_newer, self.model.student.version)
            if loaded is not None:
                await self.batcher.call(self.swap, loaded)


def error_body(status: int, message: str, request_id=None) -> dict:
    return {"id": request_id, "status": status, "error": message}


def create_app(source: StudentSource, student: LoadedStudent, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving `student` (loaded from `source`); the batcher and the reload watcher run in its lifespan."""
    preview = Preview(source, student, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if preview.settings.warmup:  # the first user does not pay for allocation (or compilation)
            await preview.batcher.call(preview.model.warm_up, preview.settings.max_batch)
        tasks = [asyncio.create_task(preview.batcher.run())]
        if source.kind == "run":
            tasks.append(asyncio.create_task(preview.watch()))
        yield
        for task in tasks:
            task.cancel()
        preview.batcher.close()

    app = FastAPI(title="onestep-distill preview", lifespan=lifespan)
    app.state.preview = preview
    request_schema = {"content": {"application/json": {"schema": GenerateRequest.model_json_schema()}}, "required": True}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/health")
    async def health() -> dict:
        return preview.health()

    @app.post("/generate", responses={200: {"content": {"image/png": {}}}}, openapi_extra={"requestBody": request_schema})
    async def generate(request: Request) -> Response:
        """JSON (seed, label or prompt, num_images) -> one PNG (a grid when num_images > 1)."""
        if not preview.allow(request.client.host if request.client else "-"):
            return JSONResponse(error_body(429, "rate limit: too many requests from this client"), 429, {"Retry-After": str(RETRY_AFTER_S)})
        declared = int(request.headers.get("content-length") or 0)
        if declared > preview.settings.limits.max_message_bytes:
            return JSONResponse(error_body(413, f"message: {declared} bytes; at most {preview.settings.limits.max_message_bytes} allowed"), 413)
        start = time.perf_counter()
        try:
            connection = f"{request.client.host}:{request.client.port}" if request.client else "-"
            job = preview.submit(parse_request(await request.body(), preview.settings.limits), connection)
        except RequestError as err:
            return JSONResponse(error_body(err.status, str(err)), err.status)
        except QueueFull as err:
            return JSONResponse(error_body(503, f"busy: {err}"), 503, {"Retry-After": str(RETRY_AFTER_S)})
        try:
            rendered = await job.future
        except asyncio.CancelledError:  # the client went away: its images are not needed
            job.cancelled = True
            raise
        headers = {"X-Server-Ms": f"{(time.perf_counter() - start) * 1000:.2f}", "X-Model-Ms": f"{rendered.model_ms:.2f}",
                   "X-Batch-Images": str(rendered.batch_images), "X-Student-Version": rendered.version}
        return Response(rendered.png, media_type="image/png", headers=headers)

    @app.websocket("/ws")
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        await PageConnection(ws, preview).serve()

    return app


class PageConnection:
    """One page's WebSocket: at most one queued request (a newer one supersedes it: "always last"), replies tagged
    with the request id, a bounded outbox, its own rate limit. Nothing a client sends stops the others' service."""

    def __init__(self, ws: WebSocket, preview: Preview):
        self.ws, self.preview = ws, preview
        self.outbox: asyncio.Queue[dict] = asyncio.Queue(OUTBOX_SIZE)
        self.bucket = TokenBucket(preview.settings.limits.rate_per_s, preview.settings.limits.burst)
        self.queued: tuple[Job, object] | None = None
        self.replies: set[asyncio.Task] = set()

    def post(self, message: dict) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a client that does not read loses replies, not the server
            self.outbox.put_nowait(message)

    async def send_loop(self) -> None:
        while True:
            await self.ws.send_text(json.dumps(await self.outbox.get()))

    async def serve(self) -> None:
        sender = asyncio.create_task(self.send_loop())
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self.handle(message)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.queued is not None:
                self.queued[0].cancelled = True
            for task in [sender, *self.replies]:
                task.cancel()

    def handle(self, message: dict) -> None:
        """One incoming frame: parse, limit, supersede the queued request, queue this one."""
        text = message.get("text")
        if text is None:
            self.post(error_body(400, "message: binary frames are not accepted; send one JSON request as text"))
            return
        limit = self.preview.settings.limits.max_message_bytes
        if len(text) > limit:
            self.post(error_body(413, f"message: {len(text)} characters; at most {limit} allowed"))
            return
        request_id = _peek_id(text)
        if not self.bucket.take():
            self.post(error_body(429, "rate limit: too many requests on this connection", request_id))
            return
        try:
            job = self.preview.submit(parse_request(text, self.preview.settings.limits), f"ws-{id(self)}")
        except RequestError as err:
            self.post(error_body(err.status, str(err), request_id))
            return
        except QueueFull as err:
            self.post(error_body(503, f"busy: {err}; retry after {RETRY_AFTER_S} s", request_id))
            return
        if self.queued is not None and not self.queued[0].started:  # stale: never rendered
            stale, stale_id = self.queued
            stale.cancelled = True
            self.post({"id": stale_id, "status": 409, "dropped": "superseded by a newer request"})
        self.queued = (job, request_id)
        task = asyncio.create_task(self.reply(job, request_id, time.perf_counter()))
        self.replies.add(task)
        task.add_done_callback(self.replies.discard)

    async def reply(self, job: Job, request_id, start: float) -> None:
        try:
            rendered = await job.future
        except Exception as err:  # noqa: BLE001
            self.post(error_body(500, f"generation failed: {type(err).__name__}: {err}", request_id))
            return
        self.post({"id": request_id, "status": 200, "image": "data:image/png;base64," + base64.b64encode(rendered.png).decode(),
                   "server_ms": round((time.perf_counter() - start) * 1000, 2), "model_ms": round(rendered.model_ms, 2),
                   "batch_images": rendered.batch_images, "num_images": job.size, "version": rendered.version})


def _peek_id(text: str):
    """The request id of a frame, if it is a JSON object with one (errors of a malformed request still carry it)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), (int, str)) else None
