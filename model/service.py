"""What both deployments (HTTP predict and the realtime websocket) load once and share: the checkpoint,
the voices, the warmed-up synthesizer, the scheduler and the serving limits; and the one place a
generation Job is built, so that both deployments hand the engine the same kind of request.
"""

from __future__ import annotations

import atexit
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import LoadTimes, checkpoint_dir, load_xtts, pick_device
from model.encoders import encoder_for
from model.engine import Engine
from model.scheduler import ChunkBuffer, Job, Scheduler
from model.schema import SynthesisRequest
from model.store import VoiceStore
from model.stream import Synthesizer
from model.voices import Resolved, Voice, VoiceCache, VoiceLibrary, Voices, latent_shapes

logger = logging.getLogger(__name__)

# Serving limits, overridable in the config's model_metadata (README "Limits").
DEFAULTS = {
    "max_streams": 8,  # generating at once, in one batch (README "Sizing")
    "max_queued_requests": 16,  # waiting for a place in the batch; past it, 503 with Retry-After
    "client_stall_timeout_s": 30,  # a client whose socket takes nothing this long is dropped
    "max_buffered_bytes": 64 * 2**20,  # audio made but not yet read, per request
}


def limits(metadata: dict, defaults: dict) -> dict:
    """`defaults` with the values model_metadata sets, each coerced to its default's type."""
    return {key: type(value)(metadata.get(key, value)) for key, value in defaults.items()}


@dataclass
class Service:
    synth: Synthesizer
    voices: Voices
    scheduler: Scheduler
    limits: dict
    load_times: LoadTimes

    @classmethod
    def load(cls, config: dict, data_dir: Path) -> Service:
        started = time.perf_counter()
        metadata = config.get("model_metadata") or {}
        device = pick_device()
        directory = checkpoint_dir(config["weights"][0]["mount_location"])
        logger.info("loading XTTS v2 from %s on %s", directory, device)
        load_times = LoadTimes()
        xtts = load_xtts(directory, device, load_times)

        library = VoiceLibrary.load(xtts, data_dir / "voices", metadata.get("default_speaker"))
        # Shared by the replicas and deployments that point at the same folder (README "Voices on every replica").
        store = VoiceStore.open(
            metadata.get("voice_store"), latent_shapes(xtts), int(metadata.get("voice_store_max_voices", 1000)),
            weights=config["weights"][0]["source"],
        )
        cache_size = int(metadata.get("voice_cache_size", 128))
        voices = Voices(library, VoiceCache(xtts, cache_size, store), store, names_size=cache_size)
        load_times.lap("voices")
        synth = Synthesizer(xtts)
        serving = limits(metadata, DEFAULTS)
        engine = Engine(xtts, serving["max_streams"])
        scheduler = Scheduler(serving["max_queued_requests"], engine, start=False)
        service = cls(synth, voices, scheduler, serving, load_times)
        synth.warm_up()
        scheduler.run_now(service.job(SynthesisRequest(text="Warming up.", seed=0), library.get(None), ["Warming up."]))
        scheduler.start()
        # After the runtime's graceful drain (HTTP streams finish first): whatever is still here ends
        # as stopped, with its log line, rather than vanish with the process.
        atexit.register(scheduler.close)
        load_times.lap("warm-up")
        logger.info(
            "ready in %.1f s on %s: %d voices, default %r (%s; model.pth %s)",
            time.perf_counter() - started, device, len(library.names), library.default,
            load_times, "memory-mapped" if load_times.mmap else "read into memory",
        )
        return service

    def job(self, request: SynthesisRequest, voice: Voice, sentences: list[str], arrived: float | None = None) -> Job:
        """One request to the engine: `sentences` (already checked by synth.sentences) in `voice`, encoded
        as the request asks. Not yet submitted. A windowed request joins the engine's batch; an upstream
        one runs alone on the model."""
        encoder = encoder_for(request.format, request.sample_rate)
        output = ChunkBuffer(self.limits["max_buffered_bytes"])
        timing = {} if arrived is None else {"arrived": arrived}
        if request.streamer == "upstream":
            return Job(encoder, output, chunks=lambda: self.synth.stream(request, voice, sentences), request=request, **timing)
        return Job(encoder, output, request=request, voice=voice, sentences=sentences, **timing)

    @property
    def healthy(self) -> bool:
        """Whether this replica can still generate (model/scheduler.py: the loop outlives any one error)."""
        return self.scheduler.healthy

    # What a realtime session asks of the engine (model/session.py Engine).
    def check(self, request: SynthesisRequest) -> list[str]:
        return self.synth.sentences(request)

    def resolve(self, request: SynthesisRequest) -> Resolved:
        return self.voices.resolve(request)

    def max_chars(self, language: str) -> int:
        """XTTS's per-language character limit: a realtime segment is never longer."""
        return self.synth.model.tokenizer.char_limits.get(language.split("-")[0], 250)
