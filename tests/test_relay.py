"""The relay from a job's buffer to the HTTP response, with fake streams and a fake ASGI `send`: no model."""

import asyncio
import gc
import json
import logging
import weakref

import numpy as np
import pytest
from fakes import Source, SoloQueue, job, wait_until

from model.encoders import encoder_for
from model.relay import AudioResponse, error_response
from model.scheduler import QueueFull
from model.schema import RequestError


@pytest.fixture()
def scheduler():
    s = SoloQueue(max_waiting=8)
    yield s
    s.stop()


def respond(scheduler, source, stall_timeout=5.0, is_disconnected=None, fmt="pcm"):
    j = job(source)
    j.encoder = encoder_for(fmt, 24000)
    scheduler.submit(j)
    return j, AudioResponse(j, scheduler, j.encoder.media_type, {"X-Request-Id": j.id}, stall_timeout, is_disconnected)


def serve(response, send_delay=0.0, stall_after=None):
    """Run the response's ASGI sending; a client that stops taking data after `stall_after` body messages."""
    sent = []

    async def send(message):
        if message["type"] == "http.response.body" and stall_after is not None and len(sent) > stall_after:
            await asyncio.sleep(3600)  # the socket is full and the client reads nothing
        await asyncio.sleep(send_delay)
        sent.append(message)

    # Bounded: without the stall limit, a stalled client would hold the response for ever.
    asyncio.run(asyncio.wait_for(response.stream_response(send), 20))
    return sent


def body_of(sent):
    return b"".join(m.get("body", b"") for m in sent[1:])


def test_headers_first_then_the_audio_then_a_clean_end(scheduler):
    j, response = respond(scheduler, Source([3, 0, 2]), fmt="wav")
    sent = serve(response)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    body = body_of(sent)
    assert body[:4] == b"RIFF" and len(body) == 44 + 5 * 2
    assert np.frombuffer(body[44:], "<i2").tolist() == [8192] * 5


def test_a_client_that_stops_reading_is_dropped_and_its_buffer_freed(scheduler, caplog):
    source = Source([1000] * 30, delay=0.01)
    j, response = respond(scheduler, source, stall_timeout=0.3)
    with caplog.at_level(logging.INFO, logger="model.relay"):
        sent = serve(response, stall_after=1)
    assert sent[-1].get("more_body", True)  # no final empty chunk: the transfer is broken, not short
    assert j.output.size == 0
    assert f"request {j.id}: dropped, the client read nothing for 0.3 s" in caplog.text
    wait_until(lambda: j.ended is not None)


def test_a_slow_reader_gets_everything_and_the_model_finished_long_before(scheduler):
    source = Source([1000] * 10)
    j, response = respond(scheduler, source)
    sent = serve(response, send_delay=0.05)
    assert len(body_of(sent)) == 10 * 1000 * 2 and sent[-1]["more_body"] is False
    assert j.ended == "done"


def test_a_client_gone_while_queued_leaves_the_queue_without_touching_the_model(scheduler):
    import threading

    gate = threading.Event()
    first = job(Source([10], gate=gate))
    scheduler.submit(first)

    async def gone() -> bool:
        return True

    source = Source([10] * 5)
    j, response = respond(scheduler, source, is_disconnected=gone)
    serve(response)
    gate.set()
    wait_until(lambda: first.ended == "done")
    assert not source.started and j.ended == "stopped: the client disconnected while queued"


def test_closing_the_body_early_withdraws_the_job(scheduler):
    source = Source([10] * 50, delay=0.02)
    j, response = respond(scheduler, source)

    async def take_one():
        first = await anext(response.body_iterator)
        await response.body_iterator.aclose()  # what Starlette's cancellation amounts to
        return first

    assert len(asyncio.run(take_one())) >= 20
    wait_until(lambda: j.ended is not None)
    assert j.ended == "stopped: the client disconnected" and source.made < 50 and source.closed


def test_a_failure_mid_stream_ends_the_body_without_its_final_chunk(scheduler):
    j, response = respond(scheduler, Source([10] * 5, fail_at=2))
    sent = serve(response)
    assert len(body_of(sent)) == 2 * 20
    assert all(m.get("more_body", True) for m in sent)


def test_error_responses_name_the_field_and_a_full_queue_says_when_to_retry():
    full = error_response(QueueFull(16, retry_after=7))
    assert full.status_code == 503 and full.headers["retry-after"] == "7"
    assert json.loads(full.body)["error"].startswith("`queue`: 16 requests are already waiting")
    bad = error_response(RequestError("speaker", "unknown speaker 'X'"))
    assert bad.status_code == 400 and "retry-after" not in bad.headers
    assert json.loads(bad.body) == {"error": "`speaker`: unknown speaker 'X'"}


@pytest.mark.parametrize("fail_at", [None, 2], ids=["complete", "failed"])
def test_the_response_is_freed_without_waiting_for_a_garbage_collection(scheduler, fail_at):
    """Truss gives back a predict_concurrency slot when the response object is freed: a reference cycle
    would hold the slot until a collection, and an idle server may run none (the next request hangs)."""
    j, response = respond(scheduler, Source([10] * 5, fail_at=fail_at))
    freed = weakref.ref(response)
    gc.disable()
    try:
        serve(response)
        del response
        assert freed() is None
    finally:
        gc.enable()
