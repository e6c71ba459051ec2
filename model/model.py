"""Truss adapter: load XTTS v2 once, then stream 16-bit PCM for each request.

No `from __future__ import annotations` here: truss reads predict's annotations to validate the body
and to pass the HTTP request.
"""

import logging
import time
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from model.audio import SAMPLE_RATE, media_type
from model.checkpoint import LoadTimes, checkpoint_dir, load_xtts, pick_device
from model.relay import RequestLog, relay
from model.schema import RequestError, SynthesisRequest
from model.stream import Synthesizer
from model.voices import VoiceCache, VoiceLibrary, Voices

logger = logging.getLogger(__name__)


async def _never_disconnected() -> bool:
    return False


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._metadata = self._config.get("model_metadata") or {}
        self._voices: Voices | None = None
        self._synth: Synthesizer | None = None
        self.load_times: LoadTimes | None = None  # per step of load(), for the log and scripts/bench_cold_start.py

    def load(self) -> None:
        started = time.perf_counter()
        device = pick_device()
        directory = checkpoint_dir(self._config["weights"][0]["mount_location"])
        logger.info("loading XTTS v2 from %s on %s", directory, device)
        self.load_times = LoadTimes()
        xtts = load_xtts(directory, device, self.load_times)

        library = VoiceLibrary.load(xtts, self._data_dir / "voices", self._metadata.get("default_speaker"))
        self._voices = Voices(library, VoiceCache(xtts, size=int(self._metadata.get("voice_cache_size", 128))))
        self.load_times.lap("voices")
        self._synth = Synthesizer(xtts)
        self._synth.warm_up(library.get(None))
        self.load_times.lap("warm-up")
        logger.info(
            "ready in %.1f s on %s: %d voices, default %r (%s; model.pth %s)",
            time.perf_counter() - started, device, len(library.names), library.default,
            self.load_times, "memory-mapped" if self.load_times.mmap else "read into memory",
        )

    # `http` is None when called in process (tests, benchmarks): there is no client to lose.
    def predict(self, request: SynthesisRequest, http: Request = None) -> StreamingResponse | JSONResponse:
        if request.listing == "voices":
            return JSONResponse(self._voices.catalogue())
        log = RequestLog()
        # Everything that can reject the request runs here, before the stream starts: an error
        # raised inside the stream would reach the client as a 200 with a cut-off body.
        try:
            chosen = self._voices.resolve(request)
            self._synth.check_text(request)
        except RequestError as exc:
            logger.info("request %s rejected: `%s`: %s", log.id, exc.field, exc)
            raise HTTPException(status_code=exc.status, detail=f"`{exc.field}`: {exc}") from None

        # The text is logged as a prefix and a length only: requests can carry private text.
        logger.info(
            "request %s: %d chars (%r...) in %s, voice %s, chunk_size %d, %s streamer, %s",
            log.id, len(request.text), request.text[:24], request.language,
            chosen.voice_id or request.speaker or "default", request.chunk_size, request.streamer, request.format,
        )
        headers = {"X-Sample-Rate": str(SAMPLE_RATE), "X-Request-Id": log.id}
        if chosen.voice_id is not None:
            headers["X-Voice-Id"] = chosen.voice_id
            headers["X-Voice-Cache"] = "hit" if chosen.cache_hit else "miss"
        chunks = self._synth.stream(request, chosen.voice, on_start=log.generation_started)
        body = relay(chunks, request.format, http.is_disconnected if http else _never_disconnected, log)
        return StreamingResponse(body, media_type=media_type(request.format), headers=headers)
