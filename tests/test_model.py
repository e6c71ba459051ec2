"""The real Model.load() and predict() on the tiny random-weight checkpoint, in process."""

import asyncio
import io
import json
import time
import wave

import numpy as np
import pytest
from conftest import TOKENS, collect

from model.schema import SynthesisRequest

SAMPLES_PER_TOKEN = 1024  # HiFiGAN output samples per GPT token at 24 kHz


@pytest.fixture()
def token_counter(model):
    """Counts GPT decoding steps: the mel head runs once per generated token."""
    counter = {"tokens": 0}
    handle = model._service.xtts.gpt.mel_head.register_forward_hook(
        lambda *_: counter.__setitem__("tokens", counter["tokens"] + 1)
    )
    yield counter
    handle.remove()


def speak(model, **fields) -> list[bytes]:
    return [chunk for _, chunk in collect(model.predict(SynthesisRequest(**fields)))]


def test_load_caches_every_studio_speaker_on_the_model_device(model):
    device = model._service.xtts.device
    assert model._service.voices.library.names == ["Claribel Dervla", "Ana Florence", "Viktor Eka"]
    assert model._service.voices.library.default == "Ana Florence"  # config.yaml's default_speaker
    voice = model._service.voices.library.get("Viktor Eka")
    assert voice.gpt_cond_latent.device == device and voice.speaker_embedding.shape == (1, 512, 1)


def test_chunks_are_int16_little_endian_with_even_byte_counts(model):
    chunks = speak(model, text="Hello world.", seed=1)
    assert chunks and all(len(c) % 2 == 0 for c in chunks)
    samples = np.frombuffer(b"".join(chunks), "<i2")
    assert samples.size >= TOKENS * SAMPLES_PER_TOKEN * 0.9
    assert np.abs(samples).max() > 0  # not silence


def test_first_chunk_arrives_while_generation_is_still_running(model, token_counter):
    response = model.predict(SynthesisRequest(text="A sentence long enough for chunks.", chunk_size=10, seed=2))
    tokens_at_chunk = []

    async def drain():
        async for _ in response.body_iterator:
            tokens_at_chunk.append(token_counter["tokens"])

    asyncio.run(drain())
    assert len(tokens_at_chunk) >= 4  # 40 tokens in chunks of 10
    assert tokens_at_chunk[0] <= 11 < TOKENS <= tokens_at_chunk[-1]
    assert tokens_at_chunk == sorted(tokens_at_chunk)


def test_wav_format_starts_with_a_header_the_wave_module_parses(model):
    chunks = speak(model, text="Hello.", format="wav", seed=3)
    assert chunks[0][:4] == b"RIFF" and chunks[0][8:12] == b"WAVE"  # the header comes with the first audio
    pcm = b"".join(chunks)[44:]
    assert pcm == b"".join(speak(model, text="Hello.", seed=3))
    with wave.open(io.BytesIO(b"".join(chunks))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        assert wav.readframes(10**9) == pcm
    response = model.predict(SynthesisRequest(text="Hi.", format="wav"))
    assert response.media_type == "audio/wav" and response.headers["x-sample-rate"] == "24000"


def idle(model, timeout: float = 60) -> None:
    """Until no other stream runs: one that does changes the batch's float rounding (1 LSB at most;
    tests/test_engine.py holds crowded streams to their solo runs within a tolerance)."""
    deadline = time.monotonic() + timeout
    while model._service.scheduler.active or model._service.scheduler.waiting:
        assert time.monotonic() < deadline, "the engine never went idle"
        time.sleep(0.05)


def test_the_same_seed_gives_the_same_bytes(model):
    idle(model)
    first = b"".join(speak(model, text="Same seed, same sound.", seed=1234))
    second = b"".join(speak(model, text="Same seed, same sound.", seed=1234))
    other = b"".join(speak(model, text="Same seed, same sound.", seed=4321))
    assert first == second
    assert first != other


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"text": "hi", "speaker": "Nobody"}, "speaker"),
        ({"text": "word" * 300}, "text"),  # one unpunctuated 'sentence' past XTTS's 400-token assertion
        ({"text": "?!... —"}, "text"),  # nothing to speak
        ({"text": "\U0001F600\U0001F389"}, "text"),  # emoji only
        ({"text": "\u3002\uff01", "language": "ja"}, "text"),  # Japanese punctuation only
    ],
)
def test_requests_the_model_must_judge_are_rejected_before_any_audio(model, token_counter, fields, field):
    response = model.predict(SynthesisRequest(**fields))
    assert response.status_code == 400 and json.loads(response.body)["error"].startswith(f"`{field}`")
    assert token_counter["tokens"] == 0


def test_long_text_with_splitting_is_accepted(model):
    assert len(model._service.check(SynthesisRequest(text="Words here. " * 60, enable_text_splitting=True))) >= 2


def test_windowed_and_upstream_streamers_give_the_same_audio(model):
    windowed = speak(model, text="Both streamers, one sound.", chunk_size=10, first_chunk_size=10, seed=5)
    upstream = speak(model, text="Both streamers, one sound.", chunk_size=10, streamer="upstream", seed=5)
    assert [len(c) for c in windowed] == [len(c) for c in upstream]
    a, b = (np.frombuffer(b"".join(chunks), "<i2").astype(int) for chunks in (windowed, upstream))
    assert np.abs(a - b).max() <= 1  # float differences of ~5e-8 can flip one rounding step


def test_the_windowed_default_first_chunk_is_four_tokens_then_chunk_size(model):
    from model.engine import FIRST_CHUNK_SIZE

    lengths = [len(c) // 2 for c in speak(model, text="A small first chunk.", chunk_size=10, seed=6)]
    upstream = [len(c) // 2 for c in speak(model, text="A small first chunk.", chunk_size=10, streamer="upstream", seed=6)]
    # 40 tokens: 4, 10, 10, 10, then 6 at the end, against 10, 10, 10, 10 and an empty end.
    assert FIRST_CHUNK_SIZE == 4 and len(lengths) == len(upstream) == 5
    assert lengths[0] < 0.5 * upstream[0] and upstream[-1] < lengths[-1]
    assert sum(lengths) == sum(upstream)


@pytest.mark.parametrize("text,language", [("42", "en"), ("\u4f60\u597d", "zh-cn"), ("\u3042", "ja"), ("Hi \U0001F600", "en")])
def test_short_text_with_something_to_say_is_accepted(model, text, language):
    assert len(model._service.check(SynthesisRequest(text=text, language=language))) == 1


@pytest.mark.parametrize("fields", [{"chunk_size": 1, "speed": 2.0}, {"first_chunk_size": 2, "speed": 2.0}])
def test_a_fast_speed_with_tiny_chunks_streams_whole(model, fields):
    # One token at speed 2 stretches to no frame: the default first chunk grows to cover it.
    pcm = b"".join(speak(model, text="Quick.", seed=8, **fields))
    assert len(pcm) // 2 >= TOKENS * SAMPLES_PER_TOKEN * 0.9 / 2


@pytest.mark.parametrize("rate, speed", [(44100, 1.5), (8000, 2.0)])
def test_the_first_mp3_byte_leaves_once_lame_can_make_a_frame_whatever_the_chunk_size(model, monkeypatch, rate, speed):
    """LAME emits nothing until it holds 3 frames; a small first chunk (1024 samples at speed 1.5) holds
    less. Chunks stay small until the first byte is out, so it leaves with the first chunk that gives
    LAME its frames. Before: at chunk_size 400 it waited for the next chunk, the whole utterance."""
    import soxr

    from model import service
    from model.encoders import encoder_for, mp3_frame

    made = []  # per chunk: (24 kHz samples made so far, bytes out)

    def recording(fmt, sample_rate, *args, **kwargs):
        encoder = encoder_for(fmt, sample_rate, *args, **kwargs)
        encode = encoder.encode

        def counted(chunk):
            data = encode(chunk)
            made.append((chunk.numel() + (made[-1][0] if made else 0), len(data)))
            return data

        encoder.encode = counted
        return encoder

    monkeypatch.setattr(service, "encoder_for", recording)
    speak(model, text="The first byte of an MP3 stream.", format="mp3", sample_rate=rate, speed=speed, chunk_size=400, seed=3)
    at_first_byte = next(total for total, out in made if out)
    held = 4096 - soxr.ResampleStream(24000, rate, 1, dtype="float32", quality="HQ").resample_chunk(
        np.zeros(4096, np.float32)).size * 24000 / rate if rate != 24000 else 0  # the resampler's delay
    lame_needs = 3 * mp3_frame(rate) * 24000 / rate + held
    small_chunk = 4 * 1114 / speed  # FIRST_CHUNK_SIZE tokens
    assert made[-1][0] > 2 * at_first_byte  # most of the audio came after the first byte
    assert at_first_byte <= max(made[0][0], lame_needs + small_chunk), (at_first_byte, lame_needs, made[:6])


def test_language_auto_over_http_speaks_the_language_detected(model, caplog):
    with caplog.at_level("INFO", logger="model.model"):
        chunks = speak(model, text="Gracias por llamar, que tengas un buen día.", language="Auto", seed=0)
    assert b"".join(chunks) and " in es, voice " in caplog.text
