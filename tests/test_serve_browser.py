"""End to end in headless Chromium (Debian's package, driven by Playwright): the page redraws as the slider is dragged."""
import re


from distill.serve.app import ServeSettings, create_app
from distill.serve.bench import browser_fps, chromium_path
from distill.serve.limits import Limits
from distill.serve.runner import serve_in_thread
from distill.serve.source import StudentSource


def test_dragging_the_seed_slider_redraws_the_image_and_shows_the_latency():
    chromium = chromium_path(None)
    assert chromium, "no chromium on PATH: `make test` installs Debian's chromium package (apt-get install chromium)"
    source = StudentSource("zoo:mnist_cond_student")
    app = create_app(source, source.load_first(), ServeSettings())
    with serve_in_thread(app, Limits().max_message_bytes) as url:
        seen = browser_fps(url, chromium, num_images=1, seconds=2.0)
    print(f"page while dragging: {seen['frames_per_s']:.1f} frames/s")  # the figure is the benchmark's; here it must be > 0
    assert seen["image_changed"] and seen["frames_per_s"] > 0 and seen["mouse_moves"] > 10
    assert re.fullmatch(r"\d+\.\d", seen["round_trip_ms_readout"]) and re.fullmatch(r"\d+\.\d", seen["server_ms_readout"])
