"""The relay from generator to response body, with fake chunks and a fake client: no model."""

import asyncio
import logging

import numpy as np
import pytest
import torch

from model.encoders import encoder_for
from model.relay import RequestLog, relay


class Source:
    """A synthesis stream stand-in that records how far it was driven and whether it was closed."""

    def __init__(self, sizes, fail_at=None):
        self.sizes, self.fail_at = sizes, fail_at
        self.made, self.closed = 0, False

    def __iter__(self):
        try:
            for i, size in enumerate(self.sizes):
                if i == self.fail_at:
                    raise RuntimeError("the GPU fell over")
                self.made += 1
                yield torch.full((size,), 0.25)
        finally:
            self.closed = True


def client(disconnect_after_checks=None):
    checks = {"n": 0}

    async def is_disconnected() -> bool:
        checks["n"] += 1
        return disconnect_after_checks is not None and checks["n"] > disconnect_after_checks

    return is_disconnected


def drain(source, fmt="pcm", is_disconnected=None, log=None):
    log = log or RequestLog()

    async def run():
        return [c async for c in relay(iter(source), encoder_for(fmt, 24000), is_disconnected or client(), log)]

    return asyncio.run(run()), log


def test_the_body_is_a_wav_header_then_pcm_per_chunk_skipping_empty_ones():
    source = Source([3, 0, 2])
    body, log = drain(source, fmt="wav")
    assert [len(c) for c in body] == [44 + 6, 4]  # the header leaves with the first chunk's samples
    assert np.frombuffer(body[0][44:], "<i2").tolist() == [8192] * 3
    assert (log.ended, log.chunks, log.samples, source.closed) == ("done", 2, 5, True)
    assert log.first_chunk is not None


def test_generation_stops_within_one_chunk_of_a_disconnect():
    source = Source([10] * 50)
    body, log = drain(source, is_disconnected=client(disconnect_after_checks=2))
    assert len(body) == 2 and source.made == 2 and source.closed
    assert log.ended == "stopped: the client disconnected"


def test_a_client_gone_while_queued_costs_no_generation():
    source = Source([10] * 5)
    body, log = drain(source, is_disconnected=client(disconnect_after_checks=0))
    assert body == [] and source.made == 0 and log.first_chunk is None


def test_closing_the_body_early_closes_the_generator_and_frees_the_model():
    source = Source([10] * 50)

    async def take_one():
        body = relay(iter(source), encoder_for("pcm", 24000), client(), RequestLog())
        first = await anext(body)
        await body.aclose()  # what Starlette's cancellation amounts to
        return first

    assert len(asyncio.run(take_one())) == 20
    assert source.made == 1 and source.closed


def test_a_failure_mid_stream_is_raised_and_logged_with_the_request_id(caplog):
    source = Source([10] * 5, fail_at=2)
    log = RequestLog()
    with caplog.at_level(logging.INFO, logger="model.relay"), pytest.raises(RuntimeError, match="fell over"):
        drain(source, log=log)
    assert source.closed and log.ended == "failed after 2 chunks (RuntimeError: the GPU fell over)"
    record = next(r for r in caplog.records if log.id in r.getMessage())
    assert record.levelno == logging.ERROR


def test_queue_wait_is_the_time_before_generation_began():
    log = RequestLog()
    assert log.queued is None
    log.generation_started()
    assert log.queued is not None and log.queued >= 0
