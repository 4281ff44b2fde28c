"""End to end in headless Chromium (Debian's package, driven by Playwright): the page redraws as the slider is dragged;
a text student's page draws its first prompt at once and redraws as one types."""
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


def test_a_text_students_page_draws_its_first_prompt_at_once_and_redraws_as_one_types(tmp_path):
    import json

    from playwright.sync_api import sync_playwright

    from conftest import tiny_sd_denoiser
    from distill.export import student_record
    from eval.harness import STUDENT_FILE

    folder = tmp_path / "student"
    student = tiny_sd_denoiser(seed=2)
    scheduler, _, _ = student.export_scheduler([student.sigma_max])
    student.save_pretrained(folder, scheduler=scheduler)
    (folder / STUDENT_FILE).write_text(json.dumps(student_record([student.sigma_max], 2.0, None, ["a handwritten seven", "number two"])))
    source = StudentSource(str(folder))
    app = create_app(source, source.load_first(), ServeSettings())
    with serve_in_thread(app, Limits().max_message_bytes) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(None), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.previewStats && window.previewStats.frames > 0", timeout=30_000)  # no typing yet
            assert page.input_value("#prompt") == "a handwritten seven"
            first_src, frames, sent = (page.get_attribute("#image", "src"), page.evaluate("window.previewStats.frames"),
                                       page.evaluate("window.previewStats.sent"))
            page.locator("#prompt").fill("")
            page.locator("#prompt").type("the digit 2", delay=20)
            page.wait_for_function(f"window.previewStats.frames > {frames}", timeout=30_000)
            page.wait_for_timeout(500)  # the debounced last keystroke's frame
            assert page.get_attribute("#image", "src") != first_src
            assert page.evaluate("window.previewStats.sent") - sent <= 2  # debounced: one request for the typed words, not one a key
        finally:
            browser.close()
