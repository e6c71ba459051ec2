"""What clients do to a streaming endpoint, over HTTP on the real Truss runtime: hang up, arrive
together, hit a failure mid-stream, send huge bodies."""

import http.client
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from conftest import TOKENS, request_log_line, running_server

from model.loop import MAX_ERRORS_IN_A_ROW


def logged(server, request_id: str) -> dict:
    """The numbers on a request's end-of-request log line."""
    line = request_log_line(server, request_id)
    match = re.search(r"request \w+ (.+?): queued (\d+) ms \(position \d+\), first chunk (-|\d+)(?: ms)?, (\d+) chunks", line)
    assert match, line
    how, queued, _, chunks = match.groups()
    return {"how": how, "queued_ms": int(queued), "chunks": int(chunks)}


def post(server, body: dict) -> requests.Response:
    return requests.post(server.predict_url, json=body, timeout=180)


def test_a_dropped_request_stops_generating_within_a_chunk_and_frees_the_model(server):
    # chunk_size 1: 40 chunks if the client stayed.
    body = json.dumps({"text": "A long request that the client drops.", "chunk_size": 1, "first_chunk_size": 1})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/models/model:predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    request_id = response.getheader("x-request-id")
    assert response.status == 200 and response.read(2)  # the first audio has arrived
    connection.close()

    dropped = logged(server, request_id)
    assert dropped["how"] == "stopped: the client disconnected"
    assert dropped["chunks"] <= 3 < TOKENS  # the chunk in flight when it left, and no more

    after = post(server, {"text": "The next request.", "seed": 1})
    assert after.status_code == 200 and len(after.content) >= TOKENS * 1024 * 2 * 0.9
    # Had the dropped stream run on, this one would have queued behind its remaining ~37 chunks.
    assert logged(server, after.headers["x-request-id"])["queued_ms"] < 1000


def test_concurrent_requests_generate_together_and_each_gets_its_solo_audio(server):
    bodies = [
        {"text": f"Concurrent request number {i}.", "seed": 100 + i, "chunk_size": 10, "speaker": speaker}
        for i, speaker in enumerate(["Ana Florence", "Viktor Eka", "Claribel Dervla", "Ana Florence"])
    ]
    solo = [post(server, body).content for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: post(server, body), bodies))

    assert [r.status_code for r in together] == [200] * 4
    assert len(set(solo)) == 4
    # One batch: nobody queued behind another's utterance, and nobody's audio changed by more than the
    # batch's float rounding (the same GPT tokens: tests/test_engine.py).
    assert [r.headers["x-queue-position"] for r in together] == ["0"] * 4
    for r, alone in zip(together, solo, strict=True):
        a, b = (np.frombuffer(x, "<i2").astype(int) for x in (r.content, alone))
        assert len(a) == len(b) and np.abs(a - b).max() <= 1


FAILING_CONCURRENCY = 4  # small, so that a test can send more failures than the runtime has slots


@pytest.fixture(scope="module")
def failing_server(tiny_checkpoint, tmp_path_factory):
    """A server whose every stream fails after 2 chunks (scripts/serve.py --fail-after-chunks)."""
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("failing") / "server.log", "--fail-after-chunks", "2",
                        "--runtime", f"predict_concurrency={FAILING_CONCURRENCY}") as s:
        yield s


def test_a_failure_mid_stream_breaks_the_transfer_and_is_logged_with_the_request_id(failing_server):
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        with requests.post(failing_server.predict_url, json={"text": "Fails mid-stream.", "chunk_size": 5},
                           stream=True, timeout=60) as response:
            request_id = response.headers["x-request-id"]
            for chunk in response.iter_content(chunk_size=None):
                received += chunk
    assert response.status_code == 200 and received  # audio had started: no status code can change now
    failed = logged(failing_server, request_id)
    assert failed["how"].startswith("failed after 2 chunks (RuntimeError: failure injected")
    assert failed["chunks"] == 2

    # The model is free again: the next request starts at once (and fails the same way).
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post(failing_server, {"text": "Again."})
    assert "Traceback" in failing_server.log.read_text()  # uvicorn logs the trace


def test_more_failures_than_predict_concurrency_leave_the_server_serving(failing_server):
    """A failed stream must give its truss slot back: were it kept, the (N+1)th request would wait for ever."""
    for i in range(FAILING_CONCURRENCY + 2):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            post(failing_server, {"text": f"Failure number {i}.", "chunk_size": 5})
    started = time.perf_counter()
    listing = requests.post(failing_server.predict_url, json={"list": "voices"}, timeout=30)
    assert listing.status_code == 200 and time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "body,says",
    [
        ({"text": "hi", "speaker_wav": "A" * (11 * 2**20)}, "`speaker_wav`: Value error, 11.0 MB of base64 is over"),
        ({"text": "hi", "padding": "x" * (11 * 2**20)}, "`padding`: Extra inputs are not permitted"),
        ({"text": "y" * (11 * 2**20)}, "`text`: String should have at most 4000 characters"),
    ],
    ids=["clip", "unknown-field", "text"],
)
def test_an_oversized_body_is_refused_and_the_server_carries_on(server, body, says):
    response = post(server, body)
    assert response.status_code == 400 and says in response.json()["error"]
    assert len(response.content) < 1000  # the error does not echo the input back


def test_after_the_bad_requests_a_good_one_streams_normally(server):
    response = post(server, {"text": "Still fine.", "seed": 9})
    assert response.status_code == 200 and len(response.content) >= TOKENS * 1024 * 2 * 0.9


def test_a_replica_whose_generation_cannot_go_on_says_so_on_health_and_predict(tiny_checkpoint, tmp_path):
    """Every decode step fails (a device in a sticky error state): each request touched ends as a broken
    transfer, and after MAX_ERRORS_IN_A_ROW the loop stops for good. The health route then answers 503,
    so the platform restarts the replica, and a request gets a 503 at once instead of waiting for ever."""
    with running_server(tiny_checkpoint, tmp_path / "server.log", "--fail-every-step") as s:
        health = f"{s.base}/v1/models/model"
        assert requests.get(health, timeout=10).status_code == 200
        for i in range(MAX_ERRORS_IN_A_ROW):
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                post(s, {"text": f"Request {i} meets a broken device."})
        deadline = time.monotonic() + 10
        while requests.get(health, timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "the health route still answers 200"
            time.sleep(0.1)
        started = time.perf_counter()
        refused = post(s, {"text": "Anyone there?"})
        assert refused.status_code == 503 and time.perf_counter() - started < 5
        assert "generation has stopped on this replica" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        assert f"{MAX_ERRORS_IN_A_ROW} unexpected errors in a row" in s.log.read_text()
