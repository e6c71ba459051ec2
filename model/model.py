"""Truss adapter: load XTTS v2 once, then stream 16-bit PCM for each request.

No `from __future__ import annotations` here: truss reads predict's annotation to validate the body.
"""

import logging
import time
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import StreamingResponse

from model.audio import SAMPLE_RATE, encode_stream, media_type
from model.checkpoint import checkpoint_dir, load_xtts, pick_device
from model.schema import SynthesisRequest
from model.stream import Synthesizer, TextError
from model.voices import UnknownVoice, VoiceLibrary

logger = logging.getLogger(__name__)


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._metadata = self._config.get("model_metadata") or {}
        self._voices: VoiceLibrary | None = None
        self._synth: Synthesizer | None = None

    def load(self) -> None:
        started = time.perf_counter()
        device = pick_device()
        directory = checkpoint_dir(self._config["weights"][0]["mount_location"])
        logger.info("loading XTTS v2 from %s on %s", directory, device)
        xtts = load_xtts(directory, device)

        self._voices = VoiceLibrary.load(xtts, self._data_dir / "voices", self._metadata.get("default_speaker"))
        self._synth = Synthesizer(xtts)
        self._synth.warm_up(self._voices.get(None))
        logger.info(
            "ready in %.1f s on %s: %d voices, default %r",
            time.perf_counter() - started, device, len(self._voices.names), self._voices.default,
        )

    def predict(self, request: SynthesisRequest) -> StreamingResponse:
        # Everything that can reject the request runs here, before the stream starts: an error
        # raised inside the stream would reach the client as a 200 with a cut-off body.
        try:
            voice = self._voices.get(request.speaker)
        except UnknownVoice as exc:
            raise HTTPException(status_code=400, detail=f"`speaker`: {exc}") from None
        try:
            self._synth.check_text(request)
        except TextError as exc:
            raise HTTPException(status_code=400, detail=f"`text`: {exc}") from None

        logger.info(
            "synthesizing %d chars (%r...) in %s, chunk_size %d, format %s",
            len(request.text), request.text[:24], request.language, request.chunk_size, request.format,
        )
        chunks = self._synth.stream(request, voice)
        return StreamingResponse(
            encode_stream(chunks, request.format),
            media_type=media_type(request.format),
            headers={"X-Sample-Rate": str(SAMPLE_RATE)},
        )
