"""SIGTERM on the realtime deployment: the open sessions finish the segments already generating, close
with 1012, and only then does the runtime's own shutdown run.

The runtime (uvicorn, started by truss's TrussServer) cannot be asked to wait: at SIGTERM its handler
starts a shutdown that sends every open websocket a 1012 close frame and closes its transport at once,
while it lets HTTP responses finish (uvicorn/protocols/websockets/*_impl.py `shutdown`, server.py
`shutdown`). So the first session installs a SIGTERM handler of its own, in front of uvicorn's: it
drains the sessions, then calls uvicorn's handler, whose shutdown proceeds as before. A second SIGTERM,
or a drain past `timeout`, goes straight to uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Drains(Protocol):
    def drain(self) -> None: ...


class Shutdown:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.sessions: set[Drains] = set()
        self.draining = False
        self._installed = False

    def install(self) -> None:
        """Put the drain in front of the SIGTERM handler the runtime installed (uvicorn's), once. From the
        event loop's thread, which is the main thread in the runtime (signal handlers can only be set
        there); elsewhere (tests driving a session in process) it does nothing."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._installed = True
        runtime = signal.getsignal(signal.SIGTERM)
        if not callable(runtime):  # no runtime handler to hand over to: leave the default alone
            return
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining:  # a second SIGTERM: stop waiting
                runtime(signum, frame)
                return
            self.draining = True
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(lambda: runtime(signum, frame))))

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _drain(self, then: Callable[[], None]) -> None:
        started = time.monotonic()
        logger.info("SIGTERM: %d realtime sessions finish the segments already generating", len(self.sessions))
        for session in list(self.sessions):
            session.drain()
        while self.sessions and time.monotonic() - started < self.timeout:
            await asyncio.sleep(0.05)
        if self.sessions:
            logger.warning("SIGTERM: %d sessions still open after %.0f s; the runtime closes them", len(self.sessions), self.timeout)
        else:
            logger.info("SIGTERM: every realtime session closed after %.1f s", time.monotonic() - started)
        then()
