#!/usr/bin/env python
"""Measure every output format and rate on the tiny checkpoint, in process through Model.predict.

For each format and rate, in the same run:
- the time to the first 24 kHz chunk (the synthesizer's output, before encoding) and to the first
  encoded byte of the response body;
- the CPU time the encoder took (its thread's time in encode() and finish()) per second of audio;
- the bytes sent per second of audio;
- quality against the same run's 24 kHz audio: PCM's SNR against an offline one-shot resample at soxr's
  very-high quality, and against a one-shot resample with the streamed filter (HQ); G.711's largest error
  as a share of the codec's own round-trip error at that level; Opus's and MP3's decoded length against
  the input's, next to one codec frame plus the delay the codec declares.

Cells are interleaved and their order rotates every repetition, so that a noisy machine's drifts hit
all formats alike. Prints the "Formats" section of docs/benchmarks.md; --docs writes it there (in place of
the one before; scripts/bench_report.py keeps it when it rewrites the rest), --json keeps the raw runs.

    # 3 runs a cell, 10 to 20 minutes on 2 cores:
    .venv/bin/python scripts/bench_formats.py --docs docs/benchmarks.md --json docs/benchmarks-formats.json
    .venv/bin/python scripts/bench_formats.py --runs 1 --tokens 40     # a quick look, about 3 minutes
    # the section again from the raw runs, measuring nothing:
    .venv/bin/python scripts/bench_formats.py --from-json docs/benchmarks-formats.json --docs docs/benchmarks.md
    # only MP3's first byte against PCM's at every rate, speed and two chunk sizes (about 10 minutes),
    # kept beside the runs already in the JSON:
    .venv/bin/python scripts/bench_formats.py --first-byte-only --json docs/benchmarks-formats.json --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The server's environment (OpenMP's passive wait, oneDNN's cache), before torch loads; as bench.py does.
for key, value in yaml.safe_load((ROOT / "config.yaml").read_text())["environment_variables"].items():
    os.environ.setdefault(key, str(value))

import numpy as np  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402

sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from make_checkpoint import build_checkpoint  # noqa: E402
from truss.base.truss_config import TrussConfig  # noqa: E402

import model.service as service_module  # noqa: E402
from model.encoders import FORMAT_RATES, encoder_for, mp3_frame  # noqa: E402
from model.schema import SynthesisRequest  # noqa: E402

TEXT = "A streamed sentence, encoded in every format a voice product asks for."
RAW = {"pcm": "s16le", "mulaw": "mulaw", "alaw": "alaw"}
LAME_START = 576 + 529  # LAME's encoder delay plus the decoder's: FFmpeg's initial_padding for libmp3lame
OPUS_FRAME_48K = 960  # 20 ms, libopus's default frame


class Timed:
    """Wraps a request's encoder: when the first chunk reached it, its CPU time, and the 24 kHz audio."""

    def __init__(self, inner):
        self.inner, self.media_type, self.sample_rate = inner, inner.media_type, inner.sample_rate
        self.first_chunk: float | None = None
        self.cpu = 0.0
        self.audio: list[np.ndarray] = []
        self.made_at_first_byte: int | None = None  # 24 kHz samples handed in when the first bytes came out

    @property
    def emitted(self) -> int:  # the engine keeps chunks small until the encoder has emitted
        return self.inner.emitted

    def encode(self, chunk: torch.Tensor) -> bytes:
        self.first_chunk = self.first_chunk or time.perf_counter()
        started = time.thread_time()
        data = self.inner.encode(chunk)
        self.cpu += time.thread_time() - started
        self.audio.append(chunk.detach().cpu().numpy().copy())
        if data and self.made_at_first_byte is None:
            self.made_at_first_byte = sum(a.size for a in self.audio)
        return data

    def finish(self) -> bytes:
        started = time.thread_time()
        data = self.inner.finish()
        self.cpu += time.thread_time() - started
        return data


def decode(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """ffmpeg's decoding, at the codec's own rate, as int16 values."""
    source = ["-f", RAW[fmt], "-ar", str(rate), "-ac", "1"] if fmt in RAW else []
    out = subprocess.run(["ffmpeg", "-v", "error", *source, "-i", "pipe:0", "-f", "s16le", "pipe:1"],
                         input=data, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<i2").astype(np.float64)


def snr_db(signal: np.ndarray, test: np.ndarray) -> float:
    n = min(signal.size, test.size)
    noise = np.sum((signal[:n] - test[:n]) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(signal[:n] ** 2) / noise)


def g711_bound(fmt: str) -> np.ndarray:
    """The codec's own round-trip error for every 16-bit value (index = value + 32768)."""
    every = np.arange(-32768, 32768).astype(np.float32) / 32767.0
    table = decode(encoder_for(fmt, 8000)._encode(every), fmt, 8000)
    return np.abs(table - np.round(np.clip(every, -1, 1) * 32767.0))


def quality(fmt: str, rate: int, data: bytes, audio: np.ndarray, bounds: dict) -> dict:
    if fmt in ("pcm", "wav"):
        pcm = np.frombuffer(data[44:] if fmt == "wav" else data, "<i2") / 32767.0
        reference = audio if rate == 24000 else soxr.resample(audio, 24000, rate, quality="VHQ")
        # The same filter in one call: what is left is 16-bit rounding and any fault at the joins.
        same_filter = audio if rate == 24000 else soxr.resample(audio, 24000, rate, quality="HQ")
        return {"snr_db": snr_db(reference, pcm), "snr_same_filter_db": snr_db(same_filter, pcm),
                "length_error": int(pcm.size - reference.size)}
    decoded = decode(data, fmt, rate)
    if fmt in ("mulaw", "alaw"):
        # What the codec was handed: the same streamed resample, in 16 bits.
        streamed = encoder_for("pcm", rate)
        pcm = np.frombuffer(b"".join([streamed.encode(torch.from_numpy(audio)), streamed.finish()]), "<i2")
        error = np.abs(decoded - pcm)
        allowed = bounds[fmt][pcm.astype(int) + 32768]
        return {"error_share_of_bound": float(np.max(error / np.maximum(allowed, 1))),
                "snr_db": snr_db(soxr.resample(audio, 24000, rate, quality="VHQ"), decoded / 32767.0)}
    native = 48000 if fmt == "opus" else rate
    frame, delay = (OPUS_FRAME_48K, 0) if fmt == "opus" else (1152 if rate >= 32000 else 576, LAME_START)
    extra = decoded.size - audio.size * native / 24000
    return {"extra_samples": float(extra), "extra_ms": 1000 * extra / native, "allowed_samples": frame + delay,
            "within": bool(0 <= extra <= frame + delay) if fmt == "mp3" else bool(abs(extra) <= frame)}


def request(model, **fields) -> tuple[Timed, list[tuple[float, bytes]], float]:
    """One request through Model.predict: its encoder (wrapped), the body's pieces with their times, and
    when it was sent."""
    timed: list[Timed] = []

    def wrapped(f: str, r: int):
        timed.append(Timed(encoder_for(f, r)))
        return timed[-1]

    service_module.encoder_for = wrapped
    started = time.perf_counter()
    response = model.predict(SynthesisRequest(text=TEXT, **fields))

    async def drain():
        return [(time.perf_counter(), piece) async for piece in response.body_iterator]

    pieces = asyncio.run(drain())
    return timed[0], pieces, started


def run(model, fmt: str, rate: int, bounds: dict, seed: int) -> dict:
    encoder, pieces, started = request(model, format=fmt, sample_rate=rate, seed=seed)
    total = time.perf_counter() - started
    data = b"".join(piece for _, piece in pieces)
    audio = np.concatenate(encoder.audio).astype(np.float32)
    seconds = audio.size / 24000
    first_byte = next(t for t, piece in pieces if piece) - started
    return {
        "format": fmt, "rate": rate, "seed": seed, "total_s": total, "audio_s": seconds,
        "first_chunk_s": encoder.first_chunk - started, "first_byte_s": first_byte,
        "encode_cpu_ms_per_audio_s": 1000 * encoder.cpu / seconds, "bytes_per_audio_s": len(data) / seconds,
        **quality(fmt, rate, data, audio, bounds),
    }


SPEEDS = (0.5, 1.0, 1.5, 2.0)
CHUNK_SIZES = (20, 400)


def first_bytes(model, seed: int) -> list[dict]:
    """MP3's first byte against PCM's, at every rate and speed, at chunk_size 20 and 400: the audio made
    (24 kHz samples handed to the encoder) when each format's first bytes came out, and when they left."""
    rows = []
    for chunk_size in CHUNK_SIZES:
        for rate in FORMAT_RATES["mp3"]:
            for speed in SPEEDS:
                row = {"rate": rate, "speed": speed, "chunk_size": chunk_size, "seed": seed}
                for fmt in ("pcm", "mp3"):
                    encoder, pieces, started = request(model, format=fmt, sample_rate=rate, speed=speed,
                                                       chunk_size=chunk_size, seed=seed)
                    row[f"{fmt}_made_ms"] = 1000 * (encoder.made_at_first_byte or 0) / 24000
                    row[f"{fmt}_first_byte_s"] = next(t for t, piece in pieces if piece) - started
                    row["audio_ms"] = 1000 * sum(a.size for a in encoder.audio) / 24000
                rows.append(row)
                print(f"[{time.strftime('%H:%M:%S')}] first byte, chunk {chunk_size}, {rate} Hz, speed {speed}: "
                      f"audio made {row['pcm_made_ms']:.0f} ms (pcm), {row['mp3_made_ms']:.0f} ms (mp3)",
                      file=sys.stderr, flush=True)
    return rows


def lame_needs_ms(rate: int) -> float:
    """The audio LAME must hold before its first frame (3 frames), plus what the resampler holds back."""
    return 1000 * 3 * mp3_frame(rate) / rate + resampler_hold_ms(rate)


def first_byte_table(rows: list[dict]) -> str:
    med = statistics.median
    lines = [
        "| chunk_size | rate (Hz) | speed | audio made at PCM's first byte (ms) | at MP3's first byte (ms) "
        "| MP3 - PCM (ms) | LAME's first frame needs (ms) | a 4-token chunk at this speed (ms) | within? "
        "| PCM's first byte (ms) | MP3's first byte (ms) | utterance (ms of audio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for chunk_size in CHUNK_SIZES:
        for rate in FORMAT_RATES["mp3"]:
            for speed in SPEEDS:
                cell = [r for r in rows if (r["chunk_size"], r["rate"], r["speed"]) == (chunk_size, rate, speed)]
                if not cell:
                    continue
                need, small = lame_needs_ms(rate), 1000 * 4 * SAMPLES_PER_TOKEN / 24000 / speed
                pcm, mp3 = med(r["pcm_made_ms"] for r in cell), med(r["mp3_made_ms"] for r in cell)
                within = "yes" if mp3 <= max(pcm, need + small) + 0.5 else "NO"
                lines.append(
                    f"| {chunk_size} | {rate} | {speed:g} | {pcm:.0f} | {mp3:.0f} | {mp3 - pcm:.0f} | {need:.0f} "
                    f"| {small:.0f} | {within} | {1000 * med(r['pcm_first_byte_s'] for r in cell):.0f} "
                    f"| {1000 * med(r['mp3_first_byte_s'] for r in cell):.0f} | {med(r['audio_ms'] for r in cell):.0f} |"
                )
    return "\n".join(lines)


SAMPLES_PER_TOKEN = 1114  # at 24 kHz and speed 1 (scripts/make_checkpoint.py)

FIRST_BYTE_EXPLAINED = """\
### MP3's first byte, every rate and speed

LAME emits its first frame once it holds 3 frames of audio (1152 samples a frame at 44.1 and 48 kHz, 576
below), after the resampler's delay: 264 ms of audio at 8 kHz, 72 ms at 24 kHz. A first chunk is 4 tokens,
but the windowed vocoder keeps the end of each window for the next, so the first chunk holds 320 ms of
audio at speed 0.5, 139 ms at speed 1 and 43 ms at speeds 1.5 and 2: less than LAME needs in most cells.
The engine keeps chunks first-chunk sized until the encoder has sent its first bytes, so MP3's first byte
leaves with the first chunk that completes LAME's frames, whatever `chunk_size` is. Before, the second
chunk was `chunk_size` tokens: at chunk_size 400 the first MP3 byte waited for the whole utterance at
speeds 1.5 and 2 at every rate, and at speed 1 at 8 kHz (2.8 to 5.6 s of audio made first, on this
checkpoint and text; in the issue's run over HTTP, 44.1 kHz at speed 1.5, the first byte left at 4.31 of
4.32 s against PCM's 0.39 s).

- **audio made**: the 24 kHz audio the request's encoder had been handed when its first bytes came out. It
  depends on the chunk schedule, not on the machine. **within?**: MP3's is at most the larger of PCM's and
  LAME's need plus one 4-token chunk: the first byte waits for LAME, and for nothing else. Within one LAME
  frame of PCM's first chunk is out of reach where the first chunk is shorter than LAME's 3 frames less
  one: LAME holds 3 frames before it emits one (2 without its bit reservoir, which costs quality at a
  constant bit rate and is kept).
- **first byte (ms)**: when the body's first bytes left, from sending, in process, on a shared 2-core machine
  (noisy; the audio columns are the measure).
"""


def resampler_hold_ms(rate: int, first_chunk: int = 4096) -> float:
    """Audio the streaming resampler keeps back at the end of a chunk (its filter's delay), in ms."""
    if rate == 24000:
        return 0.0
    out = soxr.ResampleStream(24000, rate, 1, dtype="float32", quality="HQ").resample_chunk(
        np.zeros(first_chunk, np.float32))
    return 1000 * (first_chunk * rate / 24000 - out.size) / rate


def table(runs: list[dict]) -> str:
    med = statistics.median
    lines = [
        "| format | rate (Hz) | runs | first chunk (ms) | first byte (ms) | first byte - first chunk (ms) "
        "| held by the resampler at each join (ms) | encoding CPU (ms per s of audio) | size (KB per s of audio) "
        "| quality |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt, rates in FORMAT_RATES.items():
        for rate in rates:
            cell = [r for r in runs if (r["format"], r["rate"]) == (fmt, rate)]
            if not cell:
                continue
            if fmt in ("pcm", "wav"):
                q = (f"SNR {med(r['snr_db'] for r in cell):.1f} dB vs a one-shot VHQ resample, "
                     f"{med(r['snr_same_filter_db'] for r in cell):.1f} dB vs one-shot HQ (the streamed filter)")
            elif fmt in ("mulaw", "alaw"):
                q = (f"max error {max(r['error_share_of_bound'] for r in cell):.2f} of G.711's own bound; "
                     f"SNR {med(r['snr_db'] for r in cell):.1f} dB")
            else:
                most = max(cell, key=lambda r: r["extra_samples"])
                q = (f"decoded length at most +{most['extra_ms']:.1f} ms ({most['extra_samples']:.0f} samples; "
                     f"frame + declared delay {most['allowed_samples']}): "
                     + ("within" if all(r["within"] for r in cell) else "NOT within"))
            lines.append(
                f"| {fmt} | {rate} | {len(cell)} | {1000 * med(r['first_chunk_s'] for r in cell):.0f} "
                f"| {1000 * med(r['first_byte_s'] for r in cell):.0f} "
                f"| {1000 * med(r['first_byte_s'] - r['first_chunk_s'] for r in cell):.1f} "
                f"| {resampler_hold_ms(rate):.0f} | {med(r['encode_cpu_ms_per_audio_s'] for r in cell):.1f} "
                f"| {med(r['bytes_per_audio_s'] for r in cell) / 1000:.1f} | {q} |"
            )
    return "\n".join(lines)


EXPLAINED = """\
In process through `Model.predict`, tiny random-weight checkpoint: its audio is quiet broadband noise,
not speech, so the sizes and SNRs below are those of noise (speech compresses better, and has little
energy near the top of each band). Every cell is a fresh request with XTTS's defaults (chunk 20,
first chunk 4 tokens) and the same seeds across formats.

- **first chunk**: when the synthesizer handed its first 24 kHz chunk to the encoder; **first byte**: when
  the response body yielded its first encoded bytes, in the same run. The difference is what the format
  costs before the first sound. A codec that needs more samples than the first chunk brings (LAME needs 3
  frames) gets first-chunk-sized chunks until its first bytes are out; the table after this one measures
  MP3 at every rate and speed.
- **held by the resampler**: the last samples of each chunk that soxr's HQ filter keeps until the next
  chunk (or the end), its delay: they do not delay the first byte, but the player has that much less
  audio in hand at each join. Codecs hold up to a frame more (Opus 20 ms; LAME more).
- **encoding CPU**: the CPU time of the encoder's thread in `encode()` and `finish()` (resampling,
  encoding, muxing, the copy off the device) per second of audio.
- **size**: body bytes per second of audio. Ogg Opus carries one page per 20 ms packet (28 bytes of
  header each, about 11 kbit/s) so that no audio waits for a page to fill; PyAV cannot flush a page at
  the end of a chunk only.
- **quality**: PCM, against one offline resample of the whole 24 kHz float audio at soxr's very-high
  quality, and against one offline resample with the filter that streams (soxr HQ): the second is the
  16-bit floor of this quiet audio, so equal figures at 24 kHz and the other rates mean the joins add
  nothing; the first adds the difference between the HQ and VHQ filters near the band edge. G.711: the
  largest error as a share of G.711's own round-trip error at that level (1.00: exactly the codec's bound),
  and the SNR. Opus and MP3: decoded length minus the input's, against one codec frame plus the codec's
  declared delay (Opus: the Ogg stream declares its pre-skip and end, so ffmpeg trims both; MP3: a stream
  carries no gapless tag, so LAME's start delay of 576 + 529 samples is played as silence, and its end is
  padded to whole frames). MP3 can end a few samples past that bound: in runs on shorter utterances and on
  synthetic chunks, 22.05 and 24 kHz came out up to 18 samples past it; tests/test_encoders.py allows the
  start delay plus two frames.
"""


def section(runs: list[dict], meta: dict) -> str:
    cells = {(r["format"], r["rate"]) for r in runs}
    most = max(sum(1 for r in runs if (r["format"], r["rate"]) == cell) for cell in cells)
    load = meta.get("load")
    load = "" if load is None else f", load average {load[0]:.1f} before and {load[1]:.1f} after"
    return "\n".join([
        "## Formats", "",
        f"Written by `scripts/bench_formats.py` ({meta['date']}{load}, on {meta['cores']} cores shared with other "
        f"work). Tiny checkpoint, {meta['tokens']} tokens ({runs[0]['audio_s']:.2f} s of audio), {meta['threads']} "
        f"torch threads, {most} run{'s' if most != 1 else ''} a cell; medians." + (f" {meta['note']}" if meta.get("note") else ""),
        "", EXPLAINED, table(runs), "",
        *([FIRST_BYTE_EXPLAINED, f"{meta['first_byte_note']}", "", first_byte_table(meta["first_byte"]), ""]
          if meta.get("first_byte") else []),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every format and rate")
    parser.add_argument("--tokens", type=int, default=120, help="GPT tokens per utterance (the checkpoint's cap)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    parser.add_argument("--docs", type=Path, help="write the section into this page (docs/benchmarks.md)")
    parser.add_argument("--from-json", type=Path, help="write the section from these raw runs; measure nothing")
    parser.add_argument("--first-byte-only", action="store_true",
                        help="measure only MP3's first byte by rate and speed; keep the other runs of --json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        return report(saved.pop("runs"), saved, args.docs)
    if args.first_byte_only and not (args.json and args.json.exists()):
        parser.error("--first-byte-only keeps the other runs of --json: give an existing --json")

    from model.model import Model

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tokens": args.tokens,
            "threads": args.threads, "cores": os.cpu_count()}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XTTS_CHECKPOINT_DIR"] = str(build_checkpoint(Path(tmp), size="tiny", max_tokens=args.tokens))
        model = Model(config=TrussConfig.from_yaml(ROOT / "config.yaml").to_dict(verbose=True), data_dir=ROOT / "data")
        model.load()
        first_byte_note = (f"Written by `scripts/bench_formats.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                           f"load average {os.getloadavg()[0]:.1f} at the start). Tiny checkpoint, {args.tokens} tokens, "
                           f"{args.threads} torch threads, one run a cell, seed 0.")
        first_byte = first_bytes(model, seed=0)
        if args.first_byte_only:
            saved = json.loads(args.json.read_text())
            saved.update(first_byte=first_byte, first_byte_note=first_byte_note)
            args.json.write_text(json.dumps(saved, indent=1))
            return report(saved.pop("runs"), saved, args.docs)
        meta.update(first_byte=first_byte, first_byte_note=first_byte_note)
        bounds = {fmt: g711_bound(fmt) for fmt in ("mulaw", "alaw")}
        cells = [(fmt, rate) for fmt, rates in FORMAT_RATES.items() for rate in rates]
        runs = []
        for rep in range(args.runs):
            shift = rep * len(cells) // max(args.runs, 1)
            for fmt, rate in cells[shift:] + cells[:shift]:
                runs.append(run(model, fmt, rate, bounds, seed=rep))
                r = runs[-1]
                print(f"[{time.strftime('%H:%M:%S')}] run {rep + 1}/{args.runs} {fmt} {rate}: first chunk "
                      f"{1000 * r['first_chunk_s']:.0f} ms, first byte {1000 * r['first_byte_s']:.0f} ms",
                      file=sys.stderr, flush=True)
    meta["load"] = (load_before, os.getloadavg()[0])
    if args.json:
        args.json.write_text(json.dumps({**meta, "runs": runs}, indent=1))
    return report(runs, meta, args.docs)


def report(runs: list[dict], meta: dict, docs: Path | None) -> int:
    text = section(runs, meta)
    print(text)
    if docs:
        # In place of the section before; the sections after it stay.
        before, _, rest = docs.read_text().partition("\n## Formats\n") if docs.exists() else ("", "", "")
        after = rest.partition("\n## ")[2]
        docs.write_text(before.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + ("\n## " + after if after else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
