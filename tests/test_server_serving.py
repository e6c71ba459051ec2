"""The serving core over HTTP on the real Truss runtime, as real clients behave: slow, impatient, many at
once. The session's server runs config.yaml as shipped (a batch of max_streams). `slow_link` runs one with
room for one stream, behind small socket buffers (conftest.SLOW_LINK), where a client that stops reading
blocks the server's sends as on a real network; `tight` is such a server with a queue of 2 and a stall
limit of 2 s. One stream at a time makes a queue form, which is what those tests are about."""

import base64
import contextlib
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml
from conftest import ROOT, TOKENS, request_log_line, running_server

from make_checkpoint import build_checkpoint

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
PREDICT_CONCURRENCY = CONFIG["runtime"]["predict_concurrency"]
MAX_QUEUED = CONFIG["model_metadata"]["max_queued_requests"]
MAX_STREAMS = CONFIG["model_metadata"]["max_streams"]
# 4 pieces with enable_text_splitting, each TOKENS tokens on the test checkpoint: at speed 0.5 about
# 700 KB of PCM, ten times what a slow link's buffers hold.
SENTENCE = "This is a sentence that the stalled client will never read. "
LONG = {"text": SENTENCE * 16, "enable_text_splitting": True, "speed": 0.5, "seed": 3}


def logged(server, request_id: str) -> dict:
    line = request_log_line(server, request_id)
    match = re.search(r"request \w+ (.+?): queued (-|\d+)(?: ms)? \(position (\d+)\).*?, (\d+) chunks, [\d.]+ s of audio in ([\d.]+) s", line)
    assert match, line
    how, queued, position, chunks, total = match.groups()
    return {"how": how, "queued_ms": None if queued == "-" else int(queued), "position": int(position),
            "chunks": int(chunks), "total_s": float(total)}


def open_and_stall(port: int, body: dict) -> tuple[socket.socket, str]:
    """Send a request, read its headers byte by byte, then read nothing more: a client that stalled.
    A small receive buffer makes the kernel's share of the backlog small, as on a slow mobile link."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/models/model:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock, re.search(rb"x-request-id: (\w+)", head, re.I).group(1).decode()


def timed_post(url: str, body: dict) -> dict:
    """One request, timed: headers, first audio, end."""
    started = time.perf_counter()
    with requests.post(url, json=body, stream=True, timeout=300) as response:
        headers_s = time.perf_counter() - started
        first_s, body = None, bytearray()
        for piece in response.iter_content(chunk_size=None):
            first_s = first_s or time.perf_counter() - started
            body += piece
        return {"status": response.status_code, "headers": dict(response.headers), "headers_s": headers_s,
                "first_audio_s": first_s, "total_s": time.perf_counter() - started, "bytes": len(body),
                "body": bytes(body) if response.status_code != 200 else b""}


@pytest.fixture(scope="module")
def slow_link(weights, tmp_path_factory):
    with running_server(weights.directory, tmp_path_factory.mktemp("slow") / "server.log",
                        "--metadata", "max_streams=1", slow_link=True) as server:
        yield server


@pytest.fixture(scope="module")
def tight(weights, tmp_path_factory):
    """One stream at a time and room for 2 waiting; a client that reads nothing for 2 s is dropped."""
    log = tmp_path_factory.mktemp("tight") / "server.log"
    with running_server(weights.directory, log, "--metadata", "max_streams=1", "--metadata", "max_queued_requests=2",
                        "--metadata", "client_stall_timeout_s=2", slow_link=True) as server:
        yield server


def test_a_stalled_reader_delays_another_request_only_by_its_own_generation(slow_link):
    with slow_link.network():
        stalled, stalled_id = open_and_stall(slow_link.port, LONG)
        try:
            time.sleep(1)
            other = timed_post(slow_link.predict_url, {"text": "Meanwhile, another caller.", "seed": 4})
            assert other["status"] == 200 and other["bytes"] >= TOKENS * 1024 * 2 * 0.9
            # The stalled client is still connected and reads nothing, its sends blocked since its first
            # chunks, yet its generation ran to the end and the model moved on: the other request waited
            # for that generation, not for the client.
            long_run = logged(slow_link, stalled_id)
            assert long_run["how"] == "done" and long_run["chunks"] >= 8
            waited = logged(slow_link, other["headers"]["x-request-id"])["queued_ms"] / 1000
            assert waited <= long_run["total_s"] + 1.0, (waited, long_run)
        finally:
            stalled.close()


def test_a_client_that_reads_nothing_is_dropped_and_its_buffer_freed(tight):
    with tight.network():
        stalled, stalled_id = open_and_stall(tight.port, LONG)
    try:
        deadline = time.monotonic() + 120
        while f"request {stalled_id}: dropped" not in tight.log.read_text():
            assert time.monotonic() < deadline, "the stalled client was never dropped"
            time.sleep(0.2)
        line = next(l for l in tight.log.read_text().splitlines() if f"request {stalled_id}: dropped" in l)
        assert re.search(r"the client read nothing for 2 s; freed \d+ unsent bytes", line)
        # Its generation stopped there, short of the 4 pieces' chunks it would have made.
        ended = logged(tight, stalled_id)
        assert ended["how"] == "stopped: the client read nothing for 2 s" and ended["chunks"] < 4 * 3
        # The server closed the connection: what the client has left to read ends without the last chunk.
        stalled.settimeout(10)
        received = b""
        while piece := stalled.recv(65536):
            received += piece
        assert not received.endswith(b"0\r\n\r\n")
    finally:
        stalled.close()


def test_a_client_that_leaves_while_queued_never_reaches_the_model(slow_link):
    # Headers come at admission, so once they are here the first request holds the model or waits for it.
    server = slow_link
    with server.network(), requests.post(server.predict_url, json={**LONG, "speed": 1.0}, stream=True, timeout=120) as ahead:
        with requests.post(server.predict_url, json={"text": "I will not wait.", "seed": 5}, stream=True, timeout=60) as queued:
            assert queued.status_code == 200 and int(queued.headers["x-queue-position"]) >= 1
            leaver = queued.headers["x-request-id"]
        assert ahead.status_code == 200 and len(ahead.content) >= 4 * TOKENS * 1024 * 2 * 0.9
    line = request_log_line(server, leaver)
    assert "stopped: the client disconnected while queued" in line and ", 0 chunks," in line
    # The generation thread logs every stream it starts: this one never started.
    assert f"request {leaver}: generation" not in server.log.read_text()


def test_invalid_requests_and_listings_are_answered_at_once_during_a_burst_of_8_streams(server, tiny_checkpoint):
    clip = base64.b64encode(b"this is not audio at all" * 100).decode()
    bad = [
        ({"text": "hi", "speaker": "Nobody"}, 400),
        ({"text": "hi", "speaker_wav": clip}, 400),
        ({"text": "?!"}, 400),
        ({"text": ""}, 400),
        ({"list": "voices"}, 200),
    ]
    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(timed_post, server.predict_url, {**LONG, "speed": 1.0, "text": SENTENCE * 8, "seed": i})
                   for i in range(8)]
        time.sleep(1.5)  # all 8 admitted, one generating
        answers = []
        for body, status in bad:
            started = time.perf_counter()
            response = requests.post(server.predict_url, json=body, timeout=30)
            answers.append((time.perf_counter() - started, response.status_code, status))
        assert not all(s.done() for s in streams), "the burst ended before the checks: make it longer"
        results = [s.result() for s in streams]
    assert [r["status"] for r in results] == [200] * 8
    assert [(got, want) for _, got, want in answers] == [(want, want) for _, _, want in answers]
    assert max(seconds for seconds, _, _ in answers) < 1.0, answers


def test_a_burst_larger_than_predict_concurrency_gets_headers_at_once_and_the_overflow_a_503(server):
    n = PREDICT_CONCURRENCY + 8
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        return timed_post(server.predict_url, {"text": f"Burst request {i}.", "seed": i})

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 503]
    assert len(ok) + len(refused) == n
    assert MAX_STREAMS + MAX_QUEUED <= len(ok) < n  # a full batch plus a full queue, at least
    assert all(r["bytes"] >= TOKENS * 1024 * 2 * 0.9 for r in ok)
    for r in refused:
        assert int(r["headers"]["retry-after"]) >= 1
        assert json.loads(r["body"])["error"].startswith("`queue`:")
    # Nobody waits without headers: the queue is ours, not truss's semaphore.
    slowest_headers = max(r["headers_s"] for r in results)
    generation = max(r["total_s"] for r in ok)
    assert slowest_headers < 5.0 and slowest_headers < generation / 2, (slowest_headers, generation)


def test_requests_at_once_generate_together_and_each_gets_its_solo_audio(server):
    """The batched engine over HTTP: the second request's audio starts before the first's ends, and
    with fixed seeds each gets the audio it gets alone (within 1 in 16-bit PCM: batch rounding)."""
    bodies = [{**LONG, "speed": 1.0, "seed": 11}, {"text": "A second caller, at the same time.", "seed": 12}]
    alone = [requests.post(server.predict_url, json=body, timeout=120).content for body in bodies]
    start = threading.Barrier(2)

    def one(body):
        start.wait()
        arrivals, data = [], bytearray()
        with requests.post(server.predict_url, json=body, stream=True, timeout=120) as response:
            assert response.status_code == 200 and response.headers["x-queue-position"] == "0"
            for piece in response.iter_content(chunk_size=None):
                arrivals.append(time.perf_counter())
                data += piece
        return arrivals, bytes(data)

    with ThreadPoolExecutor(2) as pool:
        (long_arrivals, long_audio), (short_arrivals, short_audio) = pool.map(one, bodies)
    assert short_arrivals[0] < long_arrivals[-1] and short_arrivals[-1] < long_arrivals[-1]
    for got, expected in [(long_audio, alone[0]), (short_audio, alone[1])]:
        a, b = (np.frombuffer(x, "<i2").astype(int) for x in (got, expected))
        assert len(a) == len(b) and np.abs(a - b).max() <= 1


def test_past_the_queue_bound_a_request_gets_a_503_with_retry_after_and_no_audio(tight):
    with tight.network(), contextlib.ExitStack() as streams:
        # Headers come at admission: one generating, then two waiting, and the queue is full.
        admitted = [streams.enter_context(requests.post(tight.predict_url, json={**LONG, "speed": 1.0, "seed": i},
                                                        stream=True, timeout=120)) for i in range(3)]
        assert [int(r.headers["x-queue-position"]) for r in admitted] == [0, 1, 2]
        started = time.perf_counter()
        refused = requests.post(tight.predict_url, json={"text": "One too many."}, timeout=30)
        answered = time.perf_counter() - started
        assert [(r.status_code, len(r.content) > 0) for r in admitted] == [(200, True)] * 3
    assert refused.status_code == 503 and answered < 1.0
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/json"
    assert "2 requests are already waiting" in refused.json()["error"]


@pytest.fixture(scope="module")
def early_stop_server(tmp_path_factory):
    """A checkpoint whose stop token wins at once: every utterance stops after its first token."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("early"), size="tiny", max_tokens=TOKENS, stop_bias=1e4)
    with running_server(checkpoint, tmp_path_factory.mktemp("early-log") / "server.log") as server:
        yield server


@pytest.mark.parametrize(
    "fields",
    [{"speed": 2.0}, {"speed": 2.0, "first_chunk_size": 2}, {"speed": 1.5, "streamer": "upstream", "chunk_size": 2},
     {"speed": 2.0, "streamer": "upstream"}, {"speed": 1.0}],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_a_model_that_stops_early_ends_the_stream_cleanly(early_stop_server, fields):
    # requests raises ChunkedEncodingError on a broken transfer: a clean end is the assertion.
    response = requests.post(early_stop_server.predict_url, json={"text": "Stop.", "seed": 1, **fields}, timeout=60)
    assert response.status_code == 200 and len(response.content) % 2 == 0
    assert logged(early_stop_server, response.headers["x-request-id"])["how"] == "done"
