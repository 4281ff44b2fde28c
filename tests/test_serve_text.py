"""The preview server with a text-to-image student (a tiny random Stable Diffusion exported as a student): prompts in,
decoded images out, each image a function of its own seed and prompt; labels refused, and `negative_prompt` is not in the request schema (the guidance is distilled in)."""
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import tiny_sd_denoiser
from distill.export import student_record
from distill.serve.app import ServeSettings, create_app
from distill.serve.model import PreviewModel
from distill.serve.source import StudentSource
from eval.harness import STUDENT_FILE


@pytest.fixture(scope="module")
def text_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_student") / "student"
    student = tiny_sd_denoiser(seed=2)
    scheduler, _, _ = student.export_scheduler([student.sigma_max])
    student.save_pretrained(folder, scheduler=scheduler)
    (folder / STUDENT_FILE).write_text(json.dumps(student_record([student.sigma_max], 2.0, None, ["a seven"])))
    source = StudentSource(str(folder))
    return source, source.load_first()


def test_a_prompt_gives_a_decoded_image_the_same_alone_or_batched(text_source):
    model = PreviewModel(text_source[1])
    assert model.text_to_image
    seeds, prompts = [3, 4, 5, 6], ["a handwritten seven", "the digit 2", "a handwritten seven", ""]
    batched = model.generate(seeds, prompts).astype(int)
    assert batched.shape == (4, 32, 32, 1)
    for i, (seed, prompt) in enumerate(zip(seeds, prompts)):
        alone = model.generate([seed], [prompt]).astype(int)[0]
        assert np.abs(batched[i] - alone).max() <= 1  # float tolerance: one uint8 level at most
    same_seed = model.generate([3, 3], ["a handwritten seven", "number nine"]).astype(int)
    assert np.abs(same_seed[0] - same_seed[1]).max() > 0  # the prompt matters


def test_http_takes_prompts_and_refuses_labels_and_fields_outside_the_schema(text_source):
    source, student = text_source
    with TestClient(create_app(source, student, ServeSettings(warmup=False))) as client:
        health = client.get("/health").json()
        assert health["text_to_image"] is True and health["default_prompt"] == "a seven"  # the page's first prompt
        reply = client.post("/generate", json={"seed": 1, "prompt": "a handwritten seven", "num_images": 4})
        assert reply.status_code == 200 and np.asarray(Image.open(io.BytesIO(reply.content))).shape == (64, 64)
        assert client.post("/generate", json={"seed": 1}).status_code == 200  # no prompt: the empty one
        bad = client.post("/generate", json={"seed": 1, "label": 3})
        assert bad.status_code == 422 and "send a prompt instead" in bad.json()["error"]
        bad = client.post("/generate", json={"seed": 1, "prompt": "a two", "negative_prompt": "blurry"})
        assert bad.status_code == 422 and "negative_prompt: Extra inputs are not permitted" in bad.json()["error"]
