"""The preview server over HTTP and its WebSocket: images, limits, batching, stale requests, 503/429, bad STUDENTs."""
import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from distill.serve.__main__ import main as serve_main
from distill.serve.app import ServeSettings, create_app
from distill.serve.batcher import MicroBatcher
from distill.serve.limits import Limits
from distill.serve.model import PreviewModel
from distill.serve.runner import serve_in_thread
from distill.serve.source import LoadedStudent, StudentSource

ZOO_STUDENT = "zoo:mnist_cond_student"


@pytest.fixture(scope="module")
def zoo_source():
    source = StudentSource(ZOO_STUDENT)
    return source, source.load_first()


def make_app(zoo_source, **settings):
    source, student = zoo_source
    limits = settings.pop("limits", Limits())
    return create_app(source, student, ServeSettings(limits=limits, warmup=False, **settings))


@pytest.fixture(scope="module")
def client(zoo_source):
    with TestClient(make_app(zoo_source)) as c:
        yield c


def png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


@pytest.mark.parametrize(("num_images", "side"), [(1, 28), (4, 56), (16, 112)])
def test_generate_answers_a_png_grid_of_the_students_size(client, num_images, side):
    reply = client.post("/generate", json={"seed": 5, "label": 3, "num_images": num_images})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    image = png(reply.content)
    assert image.shape == (side, side) and image.std() > 10  # a digit, not a blank
    assert float(reply.headers["x-server-ms"]) > 0


def test_health_names_the_model_and_the_openapi_schema_has_the_request(client):
    health = client.get("/health").json()
    assert health["student"] == ZOO_STUDENT and health["nfe"] == 1 and health["num_classes"] == 10 and health["queue_depth"] == 0
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"seed", "label", "num_images", "prompt"} <= body["properties"].keys() and "negative_prompt" not in body["properties"]
    assert "<script>" in client.get("/").text and "cdn" not in client.get("/").text.lower()


BAD_FIELDS = [  # (request, status, words the answer must hold: the field and what is allowed)
    ({"seed": -1, "label": 1}, 422, ["seed", "0.."]),
    ({"seed": 2**32, "label": 1}, 422, ["seed", "4294967295"]),
    ({"seed": 0, "label": 10}, 422, ["label", "0..9"]),
    ({"seed": 0}, 422, ["label", "0..9"]),
    ({"seed": 0, "label": 1, "num_images": 0}, 422, ["num_images", "1"]),
    ({"seed": 0, "label": 1, "num_images": 17}, 422, ["num_images", "1..16"]),
    ({"seed": 0, "label": 1, "prompt": "a seven"}, 422, ["prompt", "class-conditional"]),
    ({"seed": 0, "label": 1, "steps": 4}, 422, ["steps", "not permitted"]),
    ({"seed": 0, "label": 1, "prompt": "x" * 600}, 422, ["prompt", "500"]),
]


@pytest.mark.parametrize(("request_body", "status", "words"), BAD_FIELDS)
def test_each_bad_field_gets_a_4xx_naming_it_over_http_and_the_websocket(client, request_body, status, words):
    reply = client.post("/generate", json=request_body)
    assert reply.status_code == status
    assert all(word in reply.json()["error"] for word in words), reply.json()
    with client.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"id": 7, **request_body}))
        answer = ws.receive_json()
        assert answer["status"] == status and answer["id"] == 7 and all(word in answer["error"] for word in words)


def test_malformed_oversized_and_binary_messages_are_refused_and_the_connection_keeps_serving(client):
    assert client.post("/generate", content=b"{not json").status_code == 400
    assert client.post("/generate", content=b"[1, 2]").status_code == 400
    assert client.post("/generate", content=b" " * 5000 + b"{}").status_code == 413
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"\x00\xffjunk")
        assert ws.receive_json()["status"] == 400
        ws.send_text("{bad")
        assert ws.receive_json()["status"] == 400
        ws.send_text(json.dumps({"id": "x", "seed": 0, "label": 0, "pad": "y" * 5000}))
        assert ws.receive_json()["status"] == 413
        ws.send_text(json.dumps({"id": "ok", "seed": 0, "label": 0}))
        answer = ws.receive_json()
        assert answer["id"] == "ok" and answer["status"] == 200 and answer["image"].startswith("data:image/png;base64,")


def test_an_image_is_the_same_alone_or_batched_with_other_requests(zoo_source):
    model = PreviewModel(zoo_source[1])
    seeds, labels = [11, 12, 13, 14, 15, 16], [0, 1, 2, 3, 4, 5]
    batched = model.generate(seeds, labels).astype(int)
    for i, (seed, label) in enumerate(zip(seeds, labels)):
        alone = model.generate([seed], [label]).astype(int)[0]
        assert np.abs(batched[i] - alone).max() <= 1  # float tolerance: one uint8 level at most
    assert np.abs(batched[0] - batched[1]).max() > 50  # and the images differ from each other


def test_a_k_step_students_fresh_noise_is_per_image(zoo_source):
    student = LoadedStudent(zoo_source[1].denoiser, [80.0, 2.0], "two-step")
    model = PreviewModel(student)
    batched = model.generate([3, 4, 5], [7, 8, 9]).astype(int)
    alone = model.generate([5], [9]).astype(int)[0]
    assert np.abs(batched[2] - alone).max() <= 1


def test_concurrent_http_requests_are_micro_batched_and_each_gets_its_own_image(zoo_source):
    app = make_app(zoo_source, max_batch=16, max_wait_ms=100.0)
    singles = {}
    with TestClient(make_app(zoo_source)) as alone:
        for seed in range(6):
            singles[seed] = png(alone.post("/generate", json={"seed": seed, "label": seed}).content).astype(int)

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return await asyncio.gather(*[http.post("/generate", json={"seed": s, "label": s}) for s in range(6)])

    with serve_in_thread(app, Limits().max_message_bytes) as url:
        replies = asyncio.run(burst(url))
    assert max(int(r.headers["x-batch-images"]) for r in replies) > 1  # batched together
    for seed, reply in enumerate(replies):
        assert np.abs(png(reply.content).astype(int) - singles[seed]).max() <= 1  # and nobody got another's image


def slow_model(app, seconds: float):
    """Make every batch take at least `seconds` (so requests pile up behind it)."""
    preview = app.state.preview
    render = preview.batcher.run_batch

    def slow(jobs):
        time.sleep(seconds)
        return render(jobs)

    preview.batcher.run_batch = slow


def test_a_newer_request_on_the_page_supersedes_its_queued_one(zoo_source):
    app = make_app(zoo_source)
    slow_model(app, 0.4)
    with TestClient(app) as c, c.websocket_connect("/ws") as ws:
        for request_id in (1, 2, 3):
            ws.send_text(json.dumps({"id": request_id, "seed": request_id, "label": 1}))
            time.sleep(0.05)  # 1 starts; 2 waits; 3 supersedes 2
        answers = {}
        while 3 not in answers or 1 not in answers:
            answer = ws.receive_json()
            answers.setdefault(answer["id"], []).append(answer)
    assert [a["status"] for a in answers[2]] == [409] and "superseded" in answers[2][0]["dropped"]
    assert answers[1][0]["status"] == 200 and answers[3][0]["status"] == 200


def test_a_full_queue_answers_503_with_retry_after(zoo_source):
    app = make_app(zoo_source, limits=Limits(max_queue=1))
    slow_model(app, 0.3)

    async def flood(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            return await asyncio.gather(*[http.post("/generate", json={"seed": s, "label": 1}) for s in range(8)])

    with serve_in_thread(app, Limits().max_message_bytes) as url:
        replies = asyncio.run(flood(url))
        assert httpx.post(f"{url}/generate", json={"seed": 0, "label": 1}, timeout=30).status_code == 200  # still serving
    statuses = [r.status_code for r in replies]
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    assert all(r.headers["retry-after"] == "1" for r in replies if r.status_code == 503)


def test_a_client_over_its_rate_gets_429(zoo_source):
    with TestClient(make_app(zoo_source, limits=Limits(rate_per_s=0.5, burst=2))) as c:
        statuses = [c.post("/generate", json={"seed": 0, "label": 1}).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        with c.websocket_connect("/ws") as ws:  # a WebSocket has its own bucket
            for i in range(3):
                ws.send_text(json.dumps({"id": i, "seed": 0, "label": 1}))
            answers = [ws.receive_json() for _ in range(3)]
            assert sorted(a["status"] for a in answers) == [200, 200, 429]


def test_clients_that_vanish_or_never_read_leave_the_server_serving_others(zoo_source):
    from websockets.sync.client import connect

    app = make_app(zoo_source)
    with serve_in_thread(app, Limits().max_message_bytes) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        with connect(ws_url) as gone:  # sends, then disconnects before the answer
            gone.send(json.dumps({"id": 1, "seed": 1, "label": 1, "num_images": 16}))
        with connect(ws_url) as deaf, connect(ws_url) as other:
            for i in range(40):  # deaf never reads its replies
                deaf.send(json.dumps({"id": i, "seed": i, "label": 2, "num_images": 16}))
            other.send(json.dumps({"id": "mine", "seed": 9, "label": 9}))
            answer = json.loads(other.recv(timeout=30))
            while answer["id"] != "mine":
                answer = json.loads(other.recv(timeout=30))
            assert answer["status"] == 200
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_the_batcher_sends_a_full_batch_at_once_and_carries_what_does_not_fit():
    async def scenario():
        batches = []
        batcher = MicroBatcher(lambda jobs: batches.append([j.size for j in jobs]) or [None] * len(jobs), max_batch=4, max_wait_ms=5_000)
        jobs = [batcher.submit([0] * n, None) for n in (2, 2, 3, 1)]
        runner = asyncio.create_task(batcher.run())
        start = time.perf_counter()
        await asyncio.gather(*[job.future for job in jobs[:2]])
        full_s = time.perf_counter() - start
        await asyncio.wait_for(asyncio.gather(*[job.future for job in jobs[2:]]), 10)
        runner.cancel()
        batcher.close()
        return batches, full_s

    batches, full_s = asyncio.run(scenario())
    assert batches == [[2, 2], [3, 1]] and full_s < 2.5  # the full batch did not wait the 5 s


def test_a_partial_batch_waits_at_most_max_wait_ms_and_only_for_clients_just_answered():
    async def scenario():
        batcher = MicroBatcher(lambda jobs: [None] * len(jobs), max_batch=16, max_wait_ms=300)
        runner = asyncio.create_task(batcher.run())
        start = time.perf_counter()
        await batcher.submit([0], None, "a").future  # a lone client: nobody else to wait for
        await batcher.submit([0], None, "a").future
        lone_s = time.perf_counter() - start
        await asyncio.gather(*[batcher.submit([i], None, c).future for i, c in enumerate("ab")])  # two clients
        start = time.perf_counter()
        await batcher.submit([0], None, "a").future  # a, batched: waits for b (just answered), at most max_wait_ms
        partial_s = time.perf_counter() - start
        runner.cancel()
        batcher.close()
        return lone_s, partial_s

    lone_s, partial_s = asyncio.run(scenario())
    assert lone_s < 0.25 and 0.25 < partial_s < 2.5


@pytest.mark.parametrize(("args", "words"), [
    (["/no/such/student"], ["no such file or folder"]),
    (["zoo:mnist_cond"], ["not a student"]),
    (["zoo:no_such_model"], ["ships no such model"]),
])
def test_a_bad_student_is_one_error_line_and_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:")
    assert all(word in err for word in words), err


def test_a_port_in_use_is_named(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            serve_main([ZOO_STUDENT, "--port", str(port)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and f"port {port}" in err and len(err.splitlines()) == 1


def test_bad_flags_are_refused_before_loading(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_main([ZOO_STUDENT, "--max-batch", "0"])
    assert exit_info.value.code == 2 and "--max-batch" in capsys.readouterr().err


def test_the_shipped_student_serves_its_recorded_sigma(zoo_source):
    _, student = zoo_source
    assert student.sigmas == pytest.approx([float(student.denoiser.sigma_max)]) and student.denoiser.num_classes == 10


def test_the_batcher_forgets_clients_it_no_longer_expects(monkeypatch):
    import distill.serve.batcher as batcher_module

    async def scenario():
        batcher = MicroBatcher(lambda jobs: [None] * len(jobs), max_batch=16, max_wait_ms=0)
        runner = asyncio.create_task(batcher.run())
        for i in range(1100):  # a client that opens a new connection per request
            await batcher.submit([i], None, f"conn-{i}").future
        runner.cancel()
        batcher.close()
        return len(batcher.answered)

    monkeypatch.setattr(batcher_module, "RECENT_S", 0.0)
    assert asyncio.run(scenario()) <= 1025
