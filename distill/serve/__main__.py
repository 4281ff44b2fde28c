"""`python -m distill.serve STUDENT [--host 127.0.0.1] [--port 8000] ...`: the real-time preview server."""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from distill.serve.limits import Limits
from teachers.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill.serve", description=__doc__)
    parser.add_argument("student", metavar="STUDENT", help="an exported student/ folder, a run directory (its newest checkpoint, "
                        "reloaded when a newer one is sealed), a checkpoints/step-N folder, or zoo:<name> (zoo:mnist_cond_student)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batch", type=int, default=16, help="images in one micro-batched forward")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a partial batch waits for more requests (only for clients just answered that are missing from it)")
    parser.add_argument("--max-queue", type=int, default=Limits.max_queue, help="waiting requests before 503")
    parser.add_argument("--max-images", type=int, default=Limits.max_images, help="images per request")
    parser.add_argument("--rate-limit", type=float, default=Limits.rate_per_s, help="requests/s per connection before 429")
    parser.add_argument("--burst", type=int, default=Limits.burst)
    parser.add_argument("--reload-every", type=float, default=2.0, help="seconds between checks for a newer checkpoint (run dirs)")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads for the model (default: torch's own choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (compiled during warm-up)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    for name in ("port", "max_batch", "max_queue", "max_images", "burst"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)}; must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: {args.threads}; must be at least 1")
    if args.max_wait_ms < 0 or args.rate_limit <= 0 or args.reload_every <= 0:
        parser.error("--max-wait-ms must be >= 0, --rate-limit and --reload-every > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`distill-serve`); bad input is one `error:` line and exit 2."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from distill.serve.app import ServeSettings, create_app  # after argument errors, which need no torch model
    from distill.serve.runner import check_port_free, uvicorn_config
    from distill.serve.source import StudentSource

    limits = Limits(max_images=args.max_images, max_queue=args.max_queue, rate_per_s=args.rate_limit, burst=args.burst)
    settings = ServeSettings(limits=limits, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, device=args.device,
                             reload_every_s=args.reload_every, compile=args.compile)
    try:
        check_port_free(args.host, args.port)
        source = StudentSource(args.student)
        app = create_app(source, source.load_first(), settings)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    uvicorn.Server(uvicorn_config(app, args.host, args.port, limits.max_message_bytes, args.log_level)).run()


if __name__ == "__main__":
    main()
