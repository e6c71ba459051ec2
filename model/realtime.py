"""Truss adapter for the realtime deployment (config.realtime.yaml): the same model as model/model.py,
served over a websocket at /v1/websocket. Truss allows no predict beside websocket, hence a class of its own.
The protocol is model/session.py's; a SIGTERM lets open sessions finish first (model/shutdown.py)."""

import logging
from pathlib import Path

from fastapi import WebSocket

from model import session
from model.service import Service, limits
from model.shutdown import Shutdown

logger = logging.getLogger(__name__)


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._limits = limits(self._config.get("model_metadata") or {}, session.DEFAULTS)
        self._service: Service | None = None
        self._shutdown = Shutdown(self._limits["shutdown_drain_s"])

    def load(self) -> None:
        self._service = Service.load(self._config, self._data_dir)

    def is_healthy(self) -> bool:
        return self._service.healthy  # as model/model.py: 503 once generation has stopped for good

    async def websocket(self, ws: WebSocket) -> None:
        # Truss has accepted the socket already, and closes it with 1000 when this returns.
        self._shutdown.install()
        if self._shutdown.draining:
            await self._refuse(ws, session.CLOSE_RESTART, session.SHUTDOWN)
            return
        open_now = len(self._shutdown.sessions)
        if open_now >= self._limits["max_sessions"]:
            await self._refuse(ws, session.CLOSE_TRY_LATER, f"{open_now} sessions are open, the most this replica takes; retry shortly")
            return
        talk = session.Session(ws, self._service, self._limits, self._service.limits["client_stall_timeout_s"])
        self._shutdown.sessions.add(talk)
        try:
            await talk.run()
        finally:
            self._shutdown.sessions.discard(talk)

    async def _refuse(self, ws: WebSocket, code: int, message: str) -> None:
        logger.info("session refused: %s", message)
        await ws.send_json({"type": "error", "field": None, "message": message})
        await ws.close(code, message)
