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

from model.checkpoint import LoadTimes, checkpoint_dir, load_xtts, pick_device
from model.encoders import Encoder, encoder_for
from model.engine import Engine
from model.relay import AudioResponse, error_response
from model.scheduler import ChunkBuffer, Job, Scheduler
from model.schema import RequestError, SynthesisRequest
from model.stream import Synthesizer
from model.voices import Voice, VoiceCache, VoiceLibrary, Voices

logger = logging.getLogger(__name__)

# Serving limits, overridable in config.yaml's model_metadata (README "Limits").
DEFAULTS = {
    "max_streams": 8,  # generating at once, in one batch (README "Sizing")
    "max_queued_requests": 16,  # waiting for a place in the batch; past it, 503 with Retry-After
    "client_stall_timeout_s": 30,  # a client whose socket takes nothing this long is dropped
    "max_buffered_bytes": 64 * 2**20,  # audio made but not yet read, per request
}


class Model:
    def __init__(self, **kwargs) -> None:
        self._config = kwargs["config"]
        self._data_dir = Path(kwargs["data_dir"])
        self._metadata = self._config.get("model_metadata") or {}
        self._limits = {key: type(value)(self._metadata.get(key, value)) for key, value in DEFAULTS.items()}
        self._voices: Voices | None = None
        self._synth: Synthesizer | None = None
        self._scheduler: Scheduler | None = None
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
        engine = Engine(xtts, self._limits["max_streams"])
        self._scheduler = Scheduler(self._limits["max_queued_requests"], engine, start=False)
        self._synth.warm_up()
        self._scheduler.run_now(self._job(SynthesisRequest(text="Warming up.", seed=0), library.get(None), ["Warming up."]))
        self._scheduler.start()
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
        arrived = time.perf_counter()
        # Everything that can refuse the request runs here, before any audio: an error inside the
        # stream would reach the client as a 200 with a cut-off body.
        try:
            sentences = self._synth.sentences(request)
            chosen = self._voices.resolve(request)
            encoder = encoder_for(request.format, request.sample_rate)
            job = self._job(request, chosen.voice, sentences, encoder, arrived)
            self._scheduler.submit(job)
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
            headers["X-Voice-Cache"] = "hit" if chosen.cache_hit else "miss"
        return AudioResponse(
            job, self._scheduler, encoder.media_type, headers, self._limits["client_stall_timeout_s"],
            http.is_disconnected if http else None,
        )

    def _job(self, request: SynthesisRequest, voice: Voice, sentences: list[str], encoder: Encoder | None = None,
             arrived: float | None = None) -> Job:
        """A windowed request joins the engine's batch; an upstream one runs alone on the model."""
        encoder = encoder or encoder_for(request.format, request.sample_rate)
        output = ChunkBuffer(self._limits["max_buffered_bytes"])
        timing = {} if arrived is None else {"arrived": arrived}
        if request.streamer == "upstream":
            return Job(encoder, output, chunks=lambda: self._synth.stream(request, voice, sentences), request=request, **timing)
        return Job(encoder, output, request=request, voice=voice, sentences=sentences, **timing)
