"""Reference clip decoding and checks: pure functions, no model."""

import crafted
import numpy as np
import pytest
import soxr
import torch
import torchaudio
from conftest import speech_wav, tone_wav, transcode

from model import clips

RATE = clips.CONDITIONING_RATE

# An hour of 8 kHz silence as FLAC (about 6 KB), with its length in the header and without.
FLAC_HOUR = crafted.flac_declaring(3600.0, rate=8000, channels=1)
FLAC_HOUR_STREAMED = crafted.flac_streamed(3600.0, rate=8000, channels=1)

# (name, clip bytes, what the error must say): every clip the server must refuse before any audio.
BAD_CLIPS = [
    ("text", b"hello, I am not audio at all", "not a WAV, FLAC, Ogg or MP3"),
    ("playlist", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "not a WAV, FLAC, Ogg or MP3"),
    ("wav-header-only", tone_wav(1.0)[:44], "no audio frames"),
    ("wav-garbage", b"RIFF\x24\x00\x00\x00WAVE" + b"\x13\x37" * 500, "cannot decode"),
    ("flac-garbage", b"fLaC" + bytes(range(256)) * 4, "cannot decode"),
    ("mp3-garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00" + b"\x00\x01" * 300, "cannot decode"),
    ("id3-then-garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00\x01" * 300, "ID3 tag not followed by MP3"),
    ("id3-then-playlist", crafted.ID3_PLAYLIST, "ID3 tag not followed by MP3"),
    ("adts-aac", crafted.adts_aac(), "ADTS AAC, which is not accepted"),
    ("wav-nan", crafted.wav_with(float("nan")), "not finite"),
    ("wav-inf", crafted.wav_with(float("-inf")), "not finite"),
    ("wav-12-mhz", crafted.float_wav(crafted.tone(0.01, rate=12_000_000), rate=12_000_000), "12000000 Hz is not accepted"),
    ("wav-8-channels-96khz", tone_wav(1.5, rate=96000, channels=8), "8 channels at 96000 Hz is too much"),
    ("flac-hour-in-header", FLAC_HOUR, "3600.0 s of audio is too long"),
    ("flac-hour-streamed", FLAC_HOUR_STREAMED, "over 60 s of audio is too long"),
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


def test_sniffing_tells_adts_aac_and_a_bare_id3_tag_from_mp3():
    mp3 = transcode(tone_wav(2.0), "mp3")
    assert clips.sniff(mp3) == "mp3"
    assert mp3[:3] == b"ID3" and clips.sniff(mp3[clips._id3_length(mp3) :]) == "mp3"  # a bare frame
    assert clips.sniff(crafted.adts_aac()) is None
    assert clips.sniff(crafted.ID3_PLAYLIST) is None


def test_a_file_ffmpeg_reads_as_another_codec_is_refused():
    # A WAV header around MP3 data: FFmpeg's wav demuxer hands it to the MP3 decoder.
    mp3 = transcode(tone_wav(2.0), "mp3")
    wav = bytearray(tone_wav(2.0))
    wav[20:22] = (0x55).to_bytes(2, "little")  # WAVE_FORMAT_MPEGLAYER3
    data = bytes(wav[:44]) + mp3
    with pytest.raises(clips.ClipError, match="holds mp3 data, which is not accepted in wav"):
        clips.decode(data)


def test_decoding_stops_past_the_limit(monkeypatch):
    # The streamed hour has no length in its header: what stops it is the decode's stop time.
    seen = []
    original = clips.AudioDecoder.get_samples_played_in_range

    def spy(self, start_seconds=0.0, stop_seconds=None):
        samples = original(self, start_seconds, stop_seconds)
        seen.append(samples.data.shape[-1] / samples.sample_rate)
        return samples

    monkeypatch.setattr(clips.AudioDecoder, "get_samples_played_in_range", spy)
    with pytest.raises(clips.ClipError, match="over 60 s"):
        clips.decode(FLAC_HOUR_STREAMED)
    assert seen and seen[0] <= clips.MAX_SECONDS + 1


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
def test_clips_are_resampled_as_the_sinc_resampler_did_on_ordinary_rates(rate):
    """Quality against the old path (torchaudio's sinc resampler). Measured: the two differ by -46 dB
    from 24, 44.1 and 48 kHz, -35 dB from 16 kHz and -30 dB from 8 kHz, where their filters' edges
    differ; a wrong rate or a broken resampler differs by about 0 dB."""
    speech = clips.decode(speech_wav())[0].numpy()  # espeak's 22,050 Hz
    source = soxr.resample(speech, clips.CONDITIONING_RATE, rate)
    ours = clips.decode(crafted.float_wav(source, rate))[0]
    theirs = torchaudio.functional.resample(torch.from_numpy(source)[None, :], rate, clips.CONDITIONING_RATE)[0]
    n = min(len(ours), len(theirs))
    assert abs(len(ours) - len(theirs)) <= 1
    error = (ours[:n] - theirs[:n]).pow(2).mean() / theirs[:n].pow(2).mean()
    assert 10 * np.log10(error.item()) < -25
