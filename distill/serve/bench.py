"""`python -m distill.serve.bench STUDENT`: the preview server's cost, latency and throughput, on loopback only.

In one run: the bare cost of one image (student forward, grid, PNG encode) at batch 1 and at the max batch; then the
server (`python -m distill.serve` in its own process) under 1, 4 and 16 concurrent clients over HTTP and over the
WebSocket, each for a bounded time: p50/p99 latency, images/s, 5xx answers, replies that were lost or were not the
image of their own seed, and the server's resident memory; then, when Chromium is there, the frames per second the
page itself measures while its seed slider is dragged, for grids of 1, 4 and 16 images. Writes JSON and a markdown
table (experiments/serve/ by default)."""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.serve.model import PreviewModel, encode_png, grid
from distill.serve.runner import free_port
from distill.serve.source import StudentSource

CLIENT_COUNTS = (1, 4, 16)
GRIDS = (1, 4, 16)


def bare_cost_ms(model: PreviewModel, batch: int, repeats: int) -> float:
    """Median wall ms of forward + grid + PNG for `batch` one-image requests (the server's work, minus serving)."""
    labels = model.labels_of([model.request_condition(1)] * batch)
    times = []
    for r in range(repeats + 2):  # two warm-up rounds
        start = time.perf_counter()
        images = model.generate(list(range(r * batch, (r + 1) * batch)), labels)
        for image in images:
            encode_png(grid(image[None]))
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[2:]))


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def request_for(client: int, i: int, condition) -> dict:
    """Request i of a client: its own seed, and the condition fields of that seed (PreviewModel.request_condition)."""
    seed = client * 1_000_000 + i
    return {"id": i, "seed": seed, **condition(seed)}


def decode(png_bytes: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png_bytes))).astype(int)


async def http_client(url: str, client: int, stop_at: float, max_requests: int, condition, out: list, first: int = 0) -> None:
    import aiohttp  # a light client (httpx costs twice the CPU per request, and the client shares the 2 cores)

    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=60)) as http:
        for i in range(first, first + max_requests):
            if time.perf_counter() > stop_at:
                return
            body = request_for(client, i, condition)
            start = time.perf_counter()
            async with http.post("/generate", json=body) as reply:
                content = await reply.read()
            out.append((body, reply.status, (time.perf_counter() - start) * 1000, content if reply.status == 200 else None))


async def ws_client(ws_url: str, client: int, stop_at: float, max_requests: int, condition, out: list, first: int = 0) -> None:
    import base64

    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=2**22) as ws:
        for i in range(first, first + max_requests):
            if time.perf_counter() > stop_at:
                return
            body = request_for(client, i, condition)
            start = time.perf_counter()
            await ws.send(json.dumps(body))
            reply = json.loads(await ws.recv())
            ms = (time.perf_counter() - start) * 1000
            png = base64.b64decode(reply["image"].split(",", 1)[1]) if reply.get("status") == 200 else None
            out.append((body if reply.get("id") == body["id"] else {**body, "mismatched_id": reply.get("id")}, reply.get("status"), ms, png))


def load_figures(records: list, elapsed_s: float, reference) -> dict:
    """p50/p99 ms, images/s, 5xx and wrong replies of one load level."""
    ok = [r for r in records if r[1] == 200]
    latencies = np.array([r[2] for r in ok]) if ok else np.array([np.nan])
    wrong = sum(1 for body, status, _, png in ok if "mismatched_id" in body or np.abs(decode(png) - reference(body)).max() > 1)
    return {"requests": len(records), "ok": len(ok), "status_5xx": sum(1 for r in records if r[1] and r[1] >= 500),
            "other_errors": sum(1 for r in records if r[1] != 200 and not (r[1] and r[1] >= 500)), "wrong_or_lost": wrong,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "images_per_s": len(ok) / elapsed_s}


def load_records(url: str, transport: str, clients: int, seconds: float, max_requests: int, condition, first: int = 0) -> tuple[list, float]:
    """`clients` concurrent clients, each sending one-image requests back to back for `seconds` (at most max_requests,
    numbered from `first`); every reply and the wall seconds."""
    records: list = []
    stop_at = time.perf_counter() + seconds
    ws_url = url.replace("http://", "ws://") + "/ws"

    async def main():
        if transport == "http":
            await asyncio.gather(*[http_client(url, c, stop_at, max_requests, condition, records, first) for c in range(clients)])
        else:
            await asyncio.gather(*[ws_client(ws_url, c, stop_at, max_requests, condition, records, first) for c in range(clients)])

    start = time.perf_counter()
    asyncio.run(main())
    return records, time.perf_counter() - start


def run_load(url: str, transport: str, clients: int, seconds: float, max_requests: int, condition, reference) -> dict:
    """The figures of one load level."""
    records, elapsed_s = load_records(url, transport, clients, seconds, max_requests, condition)
    return load_figures(records, elapsed_s, reference)


def run_one_client_interleaved(url: str, transport: str, model: PreviewModel, seconds: float, max_requests: int, reference, rounds: int = 8) -> dict:
    """One client, in `rounds` slices alternating with the bare cost at batch 1: this machine's speed drifts by tens
    of percent within a minute, so the latency-to-bare-cost ratio is taken from measurements side by side."""
    records, elapsed_s, bare = [], 0.0, []
    for r in range(rounds):
        bare.append(bare_cost_ms(model, 1, repeats=10))
        part, part_s = load_records(url, transport, 1, seconds / rounds, max_requests, model.request_condition, first=r * max_requests)
        records += part
        elapsed_s += part_s
    return {**load_figures(records, elapsed_s, reference), "bare_ms_batch1_interleaved": float(np.median(bare))}


def start_server(student: str, port: int, args) -> subprocess.Popen:
    """`python -m distill.serve` in its own process, with no rate limit (every client here is one address)."""
    command = [sys.executable, "-m", "distill.serve", student, "--port", str(port), "--rate-limit", "1e9", "--burst", "1000000000",
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256", "--log-level", "warning",
               "--device", args.device, *(["--threads", str(args.threads)] if args.threads else [])]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:  # the standard library: httpx is a test extra
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def chromium_path(given: str | None) -> str | None:
    return given or os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browser_fps(url: str, chromium: str, num_images: int, seconds: float = 3.0) -> dict:
    """Drag the page's seed slider for `seconds` in headless Chromium; the frames and images per second the page drew,
    and its last latency readout."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.previewStats && window.previewStats.frames > 0", timeout=30_000)
            page.select_option("#num-images", str(num_images))
            page.wait_for_function(f"window.previewStats.shown.some(s => s.images === {num_images})", timeout=30_000)
            first_src = page.get_attribute("#image", "src")
            box = page.locator("#seed").bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + 2, y)
            page.mouse.down()
            before = page.evaluate("[performance.now(), window.previewStats.frames, window.previewStats.images]")
            start, moves = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:  # a steady drag across the slider, there and back
                phase = ((time.perf_counter() - start) / seconds * 2) % 2
                page.mouse.move(box["x"] + 2 + (box["width"] - 4) * (phase if phase <= 1 else 2 - phase), y)
                moves += 1
            after = page.evaluate("[performance.now(), window.previewStats.frames, window.previewStats.images]")
            page.mouse.up()
            elapsed_s = (after[0] - before[0]) / 1000
            return {"num_images": num_images, "frames_per_s": (after[1] - before[1]) / elapsed_s,
                    "images_per_s": (after[2] - before[2]) / elapsed_s, "mouse_moves": moves,
                    "image_changed": page.get_attribute("#image", "src") != first_src,
                    "round_trip_ms_readout": page.text_content("#round-trip-ms"), "server_ms_readout": page.text_content("#server-ms")}
        finally:
            browser.close()


def markdown(result: dict) -> str:
    lines = [f"# Preview server benchmark: `{result['student']}`", "",
             f"Written by `python -m distill.serve.bench {result['student']}` on {result['machine']} ({result['date']}); "
             f"max batch {result['max_batch']}, max wait {result['max_wait_ms']} ms, {result['seconds_per_level']} s per load level.", "",
             "| bare cost of one image (forward, grid, PNG) | ms |", "|---|---|",
             f"| batch 1 | {result['bare_ms_batch1']:.2f} |",
             f"| batch {result['max_batch']} (per image) | {result['bare_ms_max_batch'] / result['max_batch']:.2f} |", "",
             "| transport | clients | requests | p50 ms | p99 ms | images/s | 5xx | wrong or lost |", "|---|---|---|---|---|---|---|---|"]
    for row in result["load"]:
        lines.append(f"| {row['transport']} | {row['clients']} | {row['requests']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['images_per_s']:.1f} | {row['status_5xx']} | {row['wrong_or_lost']} |")
    targets = result["targets"]
    lines += ["", "Bare cost at batch 1 measured between the one-client slices: " + ", ".join(
        f"{r['transport']} {r['bare_ms_batch1_interleaved']:.2f} ms" for r in result["load"] if r["clients"] == 1) + "."]
    lines += ["", "| target | figure |", "|---|---|"] + [f"| {name} | {value} |" for name, value in targets.items()]
    if result.get("browser"):
        lines += ["", "| page grid (images) | frames/s the page drew while dragging | images/s |", "|---|---|---|"]
        lines += [f"| {b['num_images']} | {b['frames_per_s']:.1f} | {b['images_per_s']:.1f} |" for b in result["browser"]]
    lines += ["", f"Server memory: {result['rss_start_mb']:.1f} MB after warm-up, {result['rss_end_mb']:.1f} MB at the end."]
    return "\n".join(lines) + "\n"


def targets(result: dict) -> dict:
    rows = {(r["transport"], r["clients"]): r for r in result["load"]}
    out = {}
    for transport in ("http", "ws"):
        one, many = rows[(transport, 1)], rows[(transport, max(CLIENT_COUNTS))]
        out[f"{transport}: p50 at 1 client / bare cost of one image measured between its slices (<= 1.25)"] = \
            f"{one['p50_ms'] / one['bare_ms_batch1_interleaved']:.2f}"
        out[f"{transport}: images/s at 16 clients / at 1 client (>= 3)"] = f"{many['images_per_s'] / one['images_per_s']:.2f}"
    out["5xx at 16 clients (0)"] = sum(rows[(t, 16)]["status_5xx"] for t in ("http", "ws"))
    out["wrong or lost replies, all levels (0)"] = sum(r["wrong_or_lost"] + (r["requests"] - r["ok"] - r["other_errors"] - r["status_5xx"]) for r in result["load"])
    out["server memory growth, MB (< 50)"] = f"{result['rss_end_mb'] - result['rss_start_mb']:.1f}"
    if result.get("browser"):
        out["page frames/s, one image (>= 15)"] = f"{result['browser'][0]['frames_per_s']:.1f}"
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill.serve.bench", description=__doc__)
    parser.add_argument("student", nargs="?", default="zoo:mnist_cond_student")
    parser.add_argument("--out", default="experiments/serve", help="folder for bench.json and bench.md")
    parser.add_argument("--seconds", type=float, default=5.0, help="per load level (bounded)")
    parser.add_argument("--max-requests", type=int, default=2000, help="per client per level (bounded)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (--threads of distill.serve)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats of the bare cost")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chromium", default=None, help="Chromium binary for the page figures (default: chromium on PATH; none: skipped)")
    parser.add_argument("--browser-seconds", type=float, default=4.0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    source = StudentSource(args.student)
    model = PreviewModel(source.load_first(), args.device)
    result = {"student": args.student, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.device}",
              "date": time.strftime("%Y-%m-%d"), "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "seconds_per_level": args.seconds}
    bare_before = bare_cost_ms(model, 1, args.repeats), bare_cost_ms(model, args.max_batch, args.repeats)
    references: dict[int, np.ndarray] = {}

    def reference(body: dict) -> np.ndarray:  # the image of this seed alone, made here (not by the server)
        if body["seed"] not in references:
            image = model.generate([body["seed"]], model.labels_of([body]))[0]
            references[body["seed"]] = (image[..., 0] if image.shape[-1] == 1 else image).astype(int)
        return references[body["seed"]]

    port = free_port()
    server = start_server(args.student, port, args)
    url = f"http://127.0.0.1:{port}"
    try:
        result["rss_start_mb"] = rss_mb(server.pid)
        result["load"] = []
        for transport in ("http", "ws"):
            for clients in CLIENT_COUNTS:
                if clients == 1:
                    figures = run_one_client_interleaved(url, transport, model, args.seconds, args.max_requests, reference)
                else:
                    figures = run_load(url, transport, clients, args.seconds, args.max_requests, model.request_condition, reference)
                result["load"].append({"transport": transport, "clients": clients, **figures})
                print(f"{transport} x{clients}: p50 {figures['p50_ms']:.1f} ms, {figures['images_per_s']:.1f} images/s", flush=True)
        result["rss_end_mb"] = rss_mb(server.pid)
        bare_after = bare_cost_ms(model, 1, args.repeats), bare_cost_ms(model, args.max_batch, args.repeats)
        # this machine's speed drifts by tens of percent over a minute: the bare cost is the mean of before and after
        result["bare_ms_batch1"], result["bare_ms_max_batch"] = [(a + b) / 2 for a, b in zip(bare_before, bare_after)]
        result["bare_ms_before_after"] = [bare_before, bare_after]
        chromium = chromium_path(args.chromium)
        if chromium and args.chromium != "none":
            result["browser"] = [browser_fps(url, chromium, n, args.browser_seconds) for n in GRIDS]
    finally:
        server.terminate()
        server.wait(30)
    result["targets"] = targets(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
