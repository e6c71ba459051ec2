"""Reference clip decoding and checks: pure functions, no model."""

import pytest
from conftest import speech_wav, tone_wav, transcode

from model import clips

RATE = clips.CONDITIONING_RATE

# (name, clip bytes, what the error must say): every clip the server must refuse before any audio.
BAD_CLIPS = [
    ("text", b"hello, I am not audio at all", "not a WAV, FLAC, Ogg or MP3"),
    ("playlist", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "not a WAV, FLAC, Ogg or MP3"),
    ("wav-header-only", tone_wav(1.0)[:44], "no audio frames"),
    ("wav-garbage", b"RIFF\x24\x00\x00\x00WAVE" + b"\x13\x37" * 500, "cannot decode"),
    ("flac-garbage", b"fLaC" + bytes(range(256)) * 4, "cannot decode"),
    ("mp3-garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00\x01" * 300, "cannot decode"),
    ("too-short", tone_wav(0.5), "0.50 s of audio is too short"),
    ("too-long", tone_wav(61.0, rate=8000), "61.0 s of audio is too long"),
    ("silent", tone_wav(3.0, amplitude=0.0), "silent"),
    ("near-silent", tone_wav(3.0, amplitude=1e-4), "silent"),
]


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_each_accepted_format_decodes_to_mono_at_the_conditioning_rate(fmt):
    wav = tone_wav(2.0, rate=44100, channels=2)
    data = wav if fmt == "wav" else transcode(wav, fmt)
    assert clips.sniff(data) == fmt
    audio = clips.decode(data)
    assert audio.shape[0] == 1
    assert audio.shape[1] / RATE == pytest.approx(2.0, abs=0.1)  # MP3 adds a little padding
    assert 0.2 < audio.abs().max() <= 1.0


def test_speech_from_espeak_decodes():
    audio = clips.decode(speech_wav())
    assert audio.shape[0] == 1 and audio.shape[1] > RATE


@pytest.mark.parametrize("name,data,says", BAD_CLIPS, ids=[c[0] for c in BAD_CLIPS])
def test_a_bad_clip_is_refused_saying_why(name, data, says):
    with pytest.raises(clips.ClipError, match=says) as info:
        clips.decode(data, field="speaker_wav[1]")
    assert info.value.field == "speaker_wav[1]" and info.value.status == 400


def test_the_id_follows_the_decoded_audio_not_the_container():
    wav = tone_wav(2.0)
    same = clips.content_id([clips.decode(wav)])
    assert clips.content_id([clips.decode(transcode(wav, "flac"))]) == same
    assert clips.content_id([clips.decode(tone_wav(2.0, f0=150.0))]) != same
    a, b = clips.decode(tone_wav(1.5)), clips.decode(tone_wav(2.0))
    assert clips.content_id([a, b]) != clips.content_id([b, a])
    assert len(same) == 32 and int(same, 16) >= 0
