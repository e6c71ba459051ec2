"""A job's buffer between the generation thread and its client."""

import asyncio
import threading
import time

from model.job import ChunkBuffer


def test_the_buffer_wakes_a_waiting_reader_from_another_thread():
    output = ChunkBuffer(1 << 10)

    async def first_piece():
        threading.Timer(0.2, output.put, args=(b"ab",)).start()
        started = time.perf_counter()
        await output.wait(5)
        return output.take(), time.perf_counter() - started

    piece, waited = asyncio.run(first_piece())
    assert piece == b"ab" and 0.1 < waited < 2
