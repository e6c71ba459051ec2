import io
import wave

import numpy as np

from model.audio import SAMPLE_RATE, pcm16, wav_header


def test_pcm16_is_little_endian_clipped_and_two_bytes_a_sample():
    data = pcm16(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0], np.float32))
    assert len(data) == 14
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]
    assert data[2:4] == (16384).to_bytes(2, "little", signed=True)


def test_streamed_wav_header_parses_with_the_wave_module():
    pcm = pcm16(np.linspace(-1, 1, 480, dtype=np.float32))
    with wave.open(io.BytesIO(wav_header() + pcm)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE)
        assert wav.readframes(10**6) == pcm


def test_wav_header_with_known_size_counts_the_frames():
    pcm = b"\x01\x00" * 100
    with wave.open(io.BytesIO(wav_header(data_bytes=len(pcm)) + pcm)) as wav:
        assert wav.getnframes() == 100
    assert len(wav_header()) == 44
