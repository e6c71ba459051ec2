"""From a job's buffer to the HTTP response: the client reads at its own pace while generation runs on.

A client that goes away withdraws its job (from the queue, or at the next chunk), a client that
takes nothing for `stall_timeout` seconds is dropped and its buffer freed, and a stream cut short
ends as a broken transfer (no final empty chunk), never as a shorter clean body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Send

from model.job import Job, StreamAborted
from model.scheduler import Scheduler, Unavailable
from model.schema import RequestError

logger = logging.getLogger(__name__)

# How often a request still waiting for its first audio checks that its client is there. Starlette
# also cancels the response when the client goes; this covers servers that do not (ASGI spec 2.4).
POLL_SECONDS = 0.5


async def _never_disconnected() -> bool:
    return False


class _Stalled(Exception):
    pass


@dataclass
class _Relay:
    """What the body and the response share. Kept apart from the response so that nothing the body
    holds points back at it: truss frees a predict_concurrency slot when the response object is freed,
    and a cycle would hold that slot until a garbage collection, which an idle server may never run."""

    job: Job
    scheduler: Scheduler
    is_disconnected: Callable[[], Awaitable[bool]]
    complete: bool = False

    def let_go(self, why: str) -> None:
        if not self.complete:
            self.scheduler.withdraw(self.job, why)
            self.job.output.clear()


async def _body(relay: _Relay) -> AsyncIterator[bytes]:
    """The encoded audio as the generation thread writes it; raises StreamAborted if the stream was cut
    short. In process (tests, benchmarks) this is the whole response."""
    output = relay.job.output
    try:
        while (data := output.take()) is not None:
            if data:
                yield data
                continue
            await output.wait(POLL_SECONDS)
            if await relay.is_disconnected():
                return
        relay.complete = True
    finally:
        relay.let_go("the client disconnected")


class AudioResponse(StreamingResponse):
    """A job's audio as a chunked body. Headers go out at once, while the job may still be queued."""

    def __init__(
        self,
        job: Job,
        scheduler: Scheduler,
        media_type: str,
        headers: dict[str, str],
        stall_timeout: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ):
        self.job, self.stall_timeout = job, stall_timeout
        self._relay = _Relay(job, scheduler, is_disconnected or _never_disconnected)
        super().__init__(_body(self._relay), media_type=media_type, headers=headers)

    async def stream_response(self, send: Send) -> None:
        """Starlette's, with a time limit on each send. Returning without the final empty chunk makes
        uvicorn close the connection: what a client must read as a failed transfer."""

        async def timed(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.stall_timeout)
            except TimeoutError:
                raise _Stalled from None

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await timed({"type": "http.response.body", "body": chunk, "more_body": True})
            await timed({"type": "http.response.body", "body": b"", "more_body": False})
        except _Stalled:
            unsent = self.job.output.size
            self._relay.let_go(f"the client read nothing for {self.stall_timeout:g} s")
            logger.info(
                "request %s: dropped, the client read nothing for %g s; freed %d unsent bytes",
                self.job.id, self.stall_timeout, unsent,
            )
        except StreamAborted:  # generation failed or stopped short: already logged with the request id
            pass
        finally:
            self._relay.let_go("the client disconnected")
            await self.body_iterator.aclose()


def error_response(exc: RequestError) -> JSONResponse:
    """A request refused before any audio: its status, the field at fault, and for a full queue, when to retry."""
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    return JSONResponse({"error": f"`{exc.field}`: {exc}"}, status_code=exc.status, headers=headers)
