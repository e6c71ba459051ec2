"""From the synthesis thread to the HTTP response: encode each chunk, stop when the client has gone,
and log every request's queue wait, time to first chunk and how it ended.

Truss hands a returned StreamingResponse to Starlette as is, and nothing there closes a synchronous
generator whose client went away, so this loop checks between chunks itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import anyio
import torch

from model.encoders import Encoder

logger = logging.getLogger(__name__)


@dataclass
class RequestLog:
    """One request's timings, logged once when its stream ends. Times are seconds since `started`."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.perf_counter)
    queued: float | None = None  # until generation began (another stream held the model)
    first_chunk: float | None = None
    chunks: int = 0
    samples: int = 0
    ended: str | None = None

    def generation_started(self) -> None:
        self.queued = time.perf_counter() - self.started

    def end(self, how: str, level: int = logging.INFO) -> None:
        if self.ended is not None:
            return
        self.ended = how
        ms = lambda t: "-" if t is None else f"{t * 1000:.0f} ms"  # noqa: E731
        logger.log(
            level,
            "request %s %s: queued %s, first chunk %s, %d chunks, %.2f s of audio in %.2f s",
            self.id, how, ms(self.queued), ms(self.first_chunk), self.chunks,
            self.samples / 24000, time.perf_counter() - self.started,
        )


def _next_encoded(chunks: Iterator[torch.Tensor], encoder: Encoder) -> tuple[int | None, bytes]:
    """The next chunk's length in samples (None at the end) and its encoded bytes (at the end: the encoder's
    tail). Runs in a worker thread: generating, the device-to-host copy and encoding all stay off the event loop."""
    chunk = next(chunks, None)
    if chunk is None:
        return None, encoder.finish()
    return chunk.numel(), encoder.encode(chunk) if chunk.numel() else b""


async def relay(
    chunks: Iterator[torch.Tensor], encoder: Encoder, is_disconnected: Callable[[], Awaitable[bool]], log: RequestLog
) -> AsyncIterator[bytes]:
    """Yield the response body: each chunk in the request's format as soon as it exists, then the encoder's tail."""
    try:
        # Checked before each chunk: a client that left while queued costs nothing, and one that
        # leaves mid-stream costs at most the chunk being made when it left.
        while not await is_disconnected():
            # The model runs in a worker thread so the event loop keeps serving other requests.
            samples, data = await anyio.to_thread.run_sync(_next_encoded, chunks, encoder)
            if samples is None:
                if data:
                    yield data
                log.end("done")
                return
            if samples:
                log.first_chunk = log.first_chunk or time.perf_counter() - log.started
                log.chunks += 1
                log.samples += samples
            if data:
                yield data
        log.end("stopped: the client disconnected")
    except Exception as exc:
        # Raised on, the error reaches uvicorn, which logs the traceback and closes the connection
        # without the final empty chunk: the client sees a broken transfer, not a shorter clean body.
        log.end(f"failed after {log.chunks} chunks ({type(exc).__name__}: {exc})", logging.ERROR)
        raise
    finally:
        # Cancelled by Starlette (it noticed the disconnect first) or stopped above: either way,
        # closing the generator releases the model for the next request now, not at garbage collection.
        chunks.close()
        log.end("stopped: the response was cancelled")
