"""What both deployments (HTTP predict and the realtime websocket) load once and share: the checkpoint,
the voices, the engine with its queue and generation loop, and the serving limits; the text checks
every request passes; and the one place a generation Job is built, so that both deployments hand the
engine the same kind of request.
"""

from __future__ import annotations

import atexit
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from TTS.tts.models.xtts import Xtts

from model import language, precision, text, upstream
from model.checkpoint import LoadTimes, checkpoint_dir, load_xtts, pick_device
from model.encoders import encoder_for
from model.encoding import EncodeWorker
from model.engine import PREFILL_ROWS, Engine
from model.job import ChunkBuffer, Job
from model.loop import GenerationLoop
from model.packing import can_pack, pack_gpt
from model.scheduler import Scheduler
from model.schema import SynthesisRequest
from model.store import VoiceStore
from model.voices import Resolved, Voice, VoiceCache, VoiceLibrary, Voices, latent_shapes

logger = logging.getLogger(__name__)

# Serving limits, overridable in the config's model_metadata (README "Limits").
DEFAULTS = {
    "max_streams": 8,  # generating at once, in one batch (README "Sizing")
    "max_queued_requests": 16,  # waiting for a place in the batch; past it, 503 with Retry-After
    "prefill_rows_per_step": PREFILL_ROWS,  # prompt rows a step carries beside the generating streams
    "client_stall_timeout_s": 30,  # a client whose socket takes nothing this long is dropped
    "max_buffered_bytes": 64 * 2**20,  # audio made but not yet read, per request
    "dtype": "auto",  # the model's number format: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16
    "cuda_graphs": False,  # decode steps replayed from CUDA graphs (CUDA only; unverified, README "Sizing")
    "encode_worker": "auto",  # resampling and encoding off the generation thread: auto (on CUDA), on, off
}


def limits(metadata: dict, defaults: dict) -> dict:
    """`defaults` with the values model_metadata sets, each coerced to its default's type."""
    return {key: _coerce(metadata.get(key, value), type(value)) for key, value in defaults.items()}


def _coerce(value, kind: type):
    if kind is bool and isinstance(value, str):  # bool("false") is True
        return value.strip().lower() in ("1", "true", "yes", "on")
    return kind(value)


@dataclass
class Service:
    xtts: Xtts
    voices: Voices
    scheduler: Scheduler
    loop: GenerationLoop
    limits: dict
    load_times: LoadTimes
    worker: EncodeWorker | None = None  # encoding off the generation thread (model/encoding.py)

    @classmethod
    def load(cls, config: dict, data_dir: Path) -> Service:
        started = time.perf_counter()
        metadata = config.get("model_metadata") or {}
        device = pick_device()
        directory = checkpoint_dir(config["weights"][0]["mount_location"])
        logger.info("loading XTTS v2 from %s on %s", directory, device)
        load_times = LoadTimes()
        serving = limits(metadata, DEFAULTS)
        dtype = precision.resolve(serving["dtype"], device)  # an unknown or unsupported dtype fails here
        xtts = load_xtts(directory, device, load_times)
        if dtype != torch.float32:
            precision.cast(xtts, dtype)
            load_times.lap("cast")
        if can_pack(device, dtype):
            pack_gpt(xtts.gpt, mapped=load_times.mmap)
            load_times.lap("packing")

        library = VoiceLibrary.load(xtts, data_dir / "voices", metadata.get("default_speaker"))
        # Shared by the replicas and deployments that point at the same folder (README "Voices on every replica").
        store = VoiceStore.open(
            metadata.get("voice_store"), latent_shapes(xtts), int(metadata.get("voice_store_max_voices", 1000)),
            weights=config["weights"][0]["source"],
        )
        cache_size = int(metadata.get("voice_cache_size", 128))
        voices = Voices(library, VoiceCache(xtts, cache_size, store), store, names_size=cache_size)
        load_times.lap("voices")
        engine = Engine(
            xtts, serving["max_streams"], prefill_rows=serving["prefill_rows_per_step"], cuda_graphs=serving["cuda_graphs"],
        )
        scheduler = Scheduler(engine.max_streams, serving["max_queued_requests"])
        # On CUDA the GPU would idle while the generation thread resamples and encodes; on CPU the two
        # threads share the same cores (README "Sizing" has the measurement).
        worker = serving["encode_worker"] == "on" or (serving["encode_worker"] == "auto" and device.type == "cuda")
        service = cls(
            xtts, voices, scheduler, GenerationLoop(scheduler, engine), serving, load_times, EncodeWorker() if worker else None,
        )
        # Before the first request (and before the health route says ready): the text tools' first loads
        # (model/text.py); one whole request through the engine in the chosen dtype, which raises here
        # if any part of the pipeline does not take it; then a decode step at every batch-size bucket.
        text.warm_up(xtts.tokenizer, xtts.args.gpt_max_text_tokens)
        language.warm_up()  # language "auto"'s models (about 0.3 s)
        service.loop.run_now(service.job(SynthesisRequest(text="Warming up.", seed=0), library.get(None), ["Warming up."]))
        engine.warm_up()
        service.loop.start()
        # After the runtime's graceful drain (HTTP streams finish first): whatever is still here ends
        # as stopped, with its log line, rather than vanish with the process.
        atexit.register(service.close)
        load_times.lap("warm-up")
        logger.info(
            "ready in %.1f s on %s in %s: %d voices, default %r (%s; model.pth %s)",
            time.perf_counter() - started, device, str(dtype).removeprefix("torch."), len(library.names), library.default,
            load_times, "memory-mapped" if load_times.mmap else "read into memory",
        )
        return service

    def close(self) -> None:
        """End every job (model/loop.py), then let the worker encode what they handed it."""
        self.loop.close()
        if self.worker is not None:
            self.worker.close()

    @property
    def healthy(self) -> bool:
        """Whether this replica can still generate (model/loop.py: the loop outlives any one error)."""
        return self.loop.healthy

    def check(self, request: SynthesisRequest) -> list[str]:
        """The sentences the request will speak, each checked (model/text.py); raises text.TextError."""
        return text.sentences(request, self.xtts.tokenizer, self.xtts.args.gpt_max_text_tokens)

    def job(self, request: SynthesisRequest, voice: Voice, sentences: list[str], arrived: float | None = None) -> Job:
        """One request to the engine: `sentences` (already checked) in `voice`, encoded as the request
        asks. Not yet submitted. A windowed request joins the engine's batch; an upstream one runs alone."""
        encoder = encoder_for(request.format, request.sample_rate)
        output = ChunkBuffer(self.limits["max_buffered_bytes"])
        fields = {"worker": self.worker} if arrived is None else {"arrived": arrived, "worker": self.worker}
        if request.streamer == "upstream":
            chunks = lambda: upstream.stream(self.xtts, request, voice, sentences)  # noqa: E731
            return Job(encoder, output, chunks=chunks, request=request, **fields)
        return Job(encoder, output, request=request, voice=voice, sentences=sentences, **fields)

    # What a realtime session asks of the service (model/session.py).
    def resolve(self, request: SynthesisRequest) -> Resolved:
        return self.voices.resolve(request)

    def max_chars(self, language: str) -> int:
        """XTTS's per-language character limit: a realtime segment is never longer."""
        return self.xtts.tokenizer.char_limits.get(language.split("-")[0], 250)
