"""Run the app on uvicorn: in the foreground (the CLI) or in a thread (the benchmark and the tests)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def check_port_free(host: str, port: int) -> None:
    """OSError naming host and port when something already listens there (uvicorn's own message is a traceback)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"port {port} on {host} is in use or not available ({err.strerror})") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def uvicorn_config(app: FastAPI, host: str, port: int, max_message_bytes: int, log_level: str = "info") -> uvicorn.Config:
    # ws_max_size: uvicorn closes a WebSocket whose frame is larger than a request may be (close code 1009)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, ws_max_size=max_message_bytes, ws_ping_interval=20, ws_ping_timeout=20)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, max_message_bytes: int, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 60.0):
    """The app on uvicorn in a daemon thread; yields its base URL once it accepts connections, stops on exit."""
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, max_message_bytes, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the preview server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
