"""Truss adapter: load XTTS v2 once, then queue each request and stream its audio as it is made, many
requests at once in one batched engine.

No `from __future__ import annotations` here: truss reads predict's annotations to validate the body
and to pass the HTTP request.
"""

import logging
import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from model import language
from model.relay import AudioResponse, error_response
from model.schema import RequestError, SynthesisRequest
from model.service import Service

logger = logging.getLogger(__name__)


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._service: Service | None = None
        self.load_times = None  # per step of load(), for the log and scripts/bench_cold_start.py

    def load(self) -> None:
        # Shared with the realtime deployment (model/realtime.py): checkpoint, voices, warm-up, scheduler, limits.
        self._service = Service.load(self._config, self._data_dir)
        self.load_times = self._service.load_times

    def is_healthy(self) -> bool:
        # The health route's answer once loaded: 503 when generation has stopped for good, so the
        # platform restarts this replica rather than send it requests it would never serve.
        return self._service.healthy

    # `http` is None when called in process (tests, benchmarks): there is no client to lose.
    def predict(self, request: SynthesisRequest, http: Request = None) -> StreamingResponse | JSONResponse:
        service = self._service
        if request.listing == "voices":
            return JSONResponse(service.voices.catalogue())
        arrived = time.perf_counter()
        # Everything that can refuse the request runs here, before any audio: an error inside the
        # stream would reach the client as a 200 with a cut-off body.
        try:
            request = language.resolved(request)  # "auto": detected from the text (model/language.py)
            sentences = service.check(request)
            chosen = service.voices.resolve(request)
            job = service.job(request, chosen.voice, sentences, arrived)
            encoder = job.encoder
            service.scheduler.submit(job)
        except RequestError as exc:
            logger.info("request refused (%d): `%s`: %s", exc.status, exc.field, exc)
            return error_response(exc)

        # The text is logged as a prefix and a length only: requests can carry private text.
        logger.info(
            "request %s: %d chars (%r...) in %s, voice %s, chunk_size %d, %s streamer, %s at %d Hz, queue position %d",
            job.id, len(request.text), request.text[:24], request.language,
            chosen.voice_id or request.speaker or "default", request.chunk_size, request.streamer, request.format,
            request.sample_rate, job.position,
        )
        headers = {"X-Sample-Rate": str(encoder.sample_rate), "X-Request-Id": job.id, "X-Queue-Position": str(job.position)}
        if chosen.voice_id is not None:
            headers["X-Voice-Id"] = chosen.voice_id
            headers["X-Voice-Cache"] = "store" if chosen.from_store else "hit" if chosen.cache_hit else "miss"
        if chosen.name is not None:  # registered by this request
            headers["X-Voice-Name"] = chosen.name
            headers["X-Voice-Store"] = "shared" if chosen.stored else "replica"
        return AudioResponse(
            job, service.scheduler, encoder.media_type, headers, service.limits["client_stall_timeout_s"],
            http.is_disconnected if http else None,
        )
