"""Truss adapter: load XTTS v2 once, then stream audio in the requested format for each request.

No `from __future__ import annotations` here: truss reads predict's annotations to validate the body
and to pass the HTTP request.
"""

import logging
import time
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from model.checkpoint import checkpoint_dir, load_xtts, pick_device
from model.encoders import encoder_for
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

    def load(self) -> None:
        started = time.perf_counter()
        device = pick_device()
        directory = checkpoint_dir(self._config["weights"][0]["mount_location"])
        logger.info("loading XTTS v2 from %s on %s", directory, device)
        xtts = load_xtts(directory, device)

        library = VoiceLibrary.load(xtts, self._data_dir / "voices", self._metadata.get("default_speaker"))
        self._voices = Voices(library, VoiceCache(xtts, size=int(self._metadata.get("voice_cache_size", 128))))
        self._synth = Synthesizer(xtts)
        self._synth.warm_up(library.get(None))
        logger.info(
            "ready in %.1f s on %s: %d voices, default %r",
            time.perf_counter() - started, device, len(library.names), library.default,
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
            "request %s: %d chars (%r...) in %s, voice %s, chunk_size %d, %s streamer, %s at %d Hz",
            log.id, len(request.text), request.text[:24], request.language,
            chosen.voice_id or request.speaker or "default", request.chunk_size, request.streamer, request.format,
            request.sample_rate,
        )
        encoder = encoder_for(request.format, request.sample_rate)
        headers = {"X-Sample-Rate": str(encoder.sample_rate), "X-Request-Id": log.id}
        if chosen.voice_id is not None:
            headers["X-Voice-Id"] = chosen.voice_id
            headers["X-Voice-Cache"] = "hit" if chosen.cache_hit else "miss"
        chunks = self._synth.stream(request, chosen.voice, on_start=log.generation_started)
        body = relay(chunks, encoder, http.is_disconnected if http else _never_disconnected, log)
        return StreamingResponse(body, media_type=encoder.media_type, headers=headers)
