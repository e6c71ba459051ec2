"""Truss adapter for the realtime deployment (config.realtime.yaml): the same model as model/model.py,
served over a websocket at /v1/websocket. Truss allows no predict beside websocket, hence a class of its own.
The protocol is model/session.py's."""

import logging
from pathlib import Path

from fastapi import WebSocket

from model import session
from model.service import Service, limits

logger = logging.getLogger(__name__)


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._limits = limits(self._config.get("model_metadata") or {}, session.DEFAULTS)
        self._service: Service | None = None
        self._open = 0

    def load(self) -> None:
        self._service = Service.load(self._config, self._data_dir)

    def is_healthy(self) -> bool:
        return self._service.healthy  # as model/model.py: 503 once generation has stopped for good

    async def websocket(self, ws: WebSocket) -> None:
        # Truss has accepted the socket already, and closes it with 1000 when this returns.
        if self._open >= self._limits["max_sessions"]:
            message = f"{self._open} sessions are open, the most this replica takes; retry shortly"
            logger.info("session refused: %s", message)
            await ws.send_json({"type": "error", "field": None, "message": message})
            await ws.close(session.CLOSE_TRY_LATER, message)
            return
        self._open += 1
        try:
            await session.Session(ws, self._service, self._limits, self._service.limits["client_stall_timeout_s"]).run()
        finally:
            self._open -= 1
