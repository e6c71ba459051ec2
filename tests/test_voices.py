import math
import struct
import wave

import pytest
import torch

from model.voices import UnknownVoice, Voice, VoiceLibrary, clip_voices


def write_clip(path, seconds=3.0, f0=140.0, rate=22050):
    """A harmonic tone: a reference clip made at test time, never downloaded."""
    frames = b"".join(
        struct.pack("<h", int(8000 * sum(math.sin(k * 2 * math.pi * f0 * n / rate) / k for k in (1, 2, 3))))
        for n in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(rate)
        wav.writeframes(frames)


def test_bundled_clips_become_voices_named_by_their_stem(model, tmp_path):
    write_clip(tmp_path / "narrator.wav")
    (tmp_path / "notes.txt").write_text("not audio")
    xtts = model._synth.model
    voices = clip_voices(xtts, tmp_path)
    assert list(voices) == ["narrator"]
    assert voices["narrator"].gpt_cond_latent.shape == (1, 32, 64)
    assert voices["narrator"].speaker_embedding.shape == (1, 512, 1)

    library = VoiceLibrary.load(xtts, tmp_path, default="narrator")
    assert library.default == "narrator" and "Ana Florence" in library.names


def fake_voice() -> Voice:
    return Voice(torch.zeros(1, 32, 4), torch.zeros(1, 512, 1))


def test_an_unknown_voice_names_some_known_ones():
    library = VoiceLibrary({"a": fake_voice(), "b": fake_voice()}, default="a")
    assert library.get(None) is library.get("a")
    with pytest.raises(UnknownVoice, match="unknown speaker 'zed'; known voices include 'a', 'b'"):
        library.get("zed")


def test_a_missing_default_falls_back_to_the_first_voice(model, tmp_path):
    library = VoiceLibrary.load(model._synth.model, tmp_path / "none", default="Not There")
    assert library.default == "Claribel Dervla"
