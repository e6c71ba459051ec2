#!/usr/bin/env python
"""Realtime (config.realtime.yaml, websocket) against HTTP (config.yaml) on one checkpoint, in one run.
Prints the markdown of docs/benchmarks.md's "Realtime" section.

- first audio: from the `input.text` that completes the first sentence to its first audio frame, against
  an HTTP request for the same sentence (from sending it to its first audio), trials interleaved;
- first segment policy: a sentence with a clause, streamed at --wps, on a server that may cut the first
  segment at a clause (first_clause_chars 24, as shipped) and on one that waits for the sentence (0);
- gaps: a paragraph streamed at --wps, played back as it arrives: how long the listener waits at each
  segment boundary beyond the later of the previous audio's end and the segment's last word;
- cancel: sent as a segment's first audio arrives (chunks of 4 tokens); when its last audio frame and
  `cancelled` arrive.

    .venv/bin/python scripts/bench_realtime.py                          # tiny checkpoint, built here
    .venv/bin/python scripts/bench_realtime.py --checkpoint checkpoints/real --trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from local_server import free_port, stop, wait_healthy
from make_checkpoint import build_checkpoint
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from call import sent_by, words  # noqa: E402  (the client's own timing of the first segment)

# No clause mark: the same text is one segment over the websocket and one request over HTTP.
SENTENCE = "The weather today is mild and clear across the whole region."
CLAUSED = "Thanks for waiting on the line today, I found your order and it ships tomorrow morning."
PARAGRAPH = ("Your order left the warehouse this morning. It should reach you by Thursday afternoon. "
             "The driver will call when he is close. Is there anything else I can help with today?")


@contextlib.contextmanager
def serving(checkpoint: Path, log: Path, *args: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(checkpoint), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "scripts/serve.py", "--port", str(port), *args], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/v1/models/model", process, log, timeout=600)
        yield port
    finally:
        stop(process)


async def session(port: int, text: str, wps: float, config: dict, cancel_after: float | None = None) -> dict:
    """One session; every frame with its arrival time, every input.text with its send time."""
    frames: list[tuple[float, object]] = []
    sends: list[tuple[float, str]] = []
    async with connect(f"ws://127.0.0.1:{port}/v1/websocket", max_size=None) as ws:
        async def send() -> None:
            await ws.send(json.dumps({"type": "session.config", **config}))
            so_far = ""
            for word in words(text):
                so_far += word
                sends.append((time.perf_counter(), so_far))
                await ws.send(json.dumps({"type": "input.text", "text": word}))
                if wps:
                    await asyncio.sleep(1 / wps)
            if cancel_after is None:
                await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(send())
        cancel_sent = None
        async for message in ws:
            now = time.perf_counter()
            frame = message if isinstance(message, bytes) else json.loads(message)
            frames.append((now, frame))
            if isinstance(frame, dict) and frame["type"] == "error":
                raise RuntimeError(frame)
            if cancel_after is not None and cancel_sent is None and isinstance(frame, bytes):
                if cancel_after:
                    await asyncio.sleep(cancel_after)
                cancel_sent = time.perf_counter()
                await ws.send(json.dumps({"type": "cancel"}))
            if isinstance(frame, dict) and frame["type"] in ("session.done", "cancelled"):
                break
        await sender
    return {"frames": frames, "sends": sends, "cancel_sent": cancel_sent}


def first_audio(record: dict) -> dict:
    frames, sends = record["frames"], record["sends"]
    start = next(f for _, f in frames if isinstance(f, dict) and f["type"] == "audio.start")
    audio_at = next(t for t, f in frames if isinstance(f, bytes))
    return {"after_last_word": audio_at - sent_by(start["text"], sends), "after_first_word": audio_at - sends[0][0],
            "segment": start["text"]}


def gaps(record: dict, rate: int = 24000) -> list[float]:
    """Per boundary between segments: how long playback stalls beyond the later of the previous
    segment's audio ending and the next segment's text being complete (the wait the text imposes)."""
    frames, sends = record["frames"], record["sends"]
    play_end, text_ready, waits, first_of_segment, cursor = None, None, [], False, 0
    for at, frame in frames:
        if isinstance(frame, dict) and frame["type"] == "audio.start":
            # When the segment's text was complete: the first send whose text so far holds it, after the last one.
            text_ready, cursor = next((t, so_far.find(frame["text"], cursor) + len(frame["text"]))
                                      for t, so_far in sends if so_far.find(frame["text"], cursor) >= 0)
            first_of_segment = frame["segment"] > 1
        elif isinstance(frame, bytes):
            seconds = len(frame) / 2 / rate
            if play_end is None:
                play_end = at
            if first_of_segment:
                waits.append(max(0.0, at - max(play_end, text_ready)))
                first_of_segment = False
            play_end = max(play_end, at) + seconds
    return waits


def cancel_times(record: dict) -> dict:
    sent = record["cancel_sent"]
    frames = record["frames"]
    cancelled = next(t for t, f in frames if isinstance(f, dict) and f["type"] == "cancelled")
    last_audio = max(t for t, f in frames if isinstance(f, bytes))
    return {"last_audio": max(0.0, last_audio - sent), "cancelled": cancelled - sent,
            "frames_after": sum(1 for t, f in frames if isinstance(f, bytes) and t > sent)}


def http_first_audio(port: int, text: str, seed: int) -> float:
    started = time.perf_counter()
    with requests.post(f"http://127.0.0.1:{port}/v1/models/model:predict", json={"text": text, "seed": seed},
                       stream=True, timeout=600) as response:
        assert response.status_code == 200, response.text
        first = None
        for piece in response.iter_content(chunk_size=None):  # to the end: a request left early keeps the
            if piece and first is None:                       # model until its next chunk
                first = time.perf_counter() - started
    return first


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="default: a tiny one with 40 tokens an utterance, built here")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--wps", type=float, default=3.0, help="words per second the text streams at")
    parser.add_argument("--only-first-audio", action="store_true", help="only the realtime-against-HTTP first audio rows")
    args = parser.parse_args(argv)

    loads = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or build_checkpoint(Path(tmp) / "tiny", size="tiny", max_tokens=40)
        rt_first, http_first, ratios, policy, boundary_waits, cancels = [], [], [], {}, [], []
        with serving(checkpoint, Path(tmp) / "http.log") as http, \
                serving(checkpoint, Path(tmp) / "rt.log", "--config", "config.realtime.yaml") as rt:
            http_first_audio(http, "Warm up.", 0)
            asyncio.run(session(rt, "Warm up.", 0, {"seed": 0}))
            for i in range(args.trials):
                # Alternate which goes first, so that neither always meets the other's leftovers.
                pair = {}
                for kind in (("rt", "http") if i % 2 == 0 else ("http", "rt")):
                    if kind == "rt":
                        pair[kind] = first_audio(asyncio.run(session(rt, SENTENCE, args.wps, {"seed": i})))["after_last_word"]
                    else:
                        pair[kind] = http_first_audio(http, SENTENCE, i)
                rt_first.append(pair["rt"])
                http_first.append(pair["http"])
                ratios.append(pair["rt"] / pair["http"])
                print(f"trial {i}: realtime {pair['rt'] * 1000:.0f} ms, http {pair['http'] * 1000:.0f} ms", file=sys.stderr)
            for i in range(0 if args.only_first_audio else max(3, args.trials // 2)):
                record = asyncio.run(session(rt, PARAGRAPH, args.wps, {"seed": i}))
                boundary_waits += gaps(record)
                # Chunks of 4 tokens, cancelled as its first audio arrives: most of the segment is still to make.
                cancels.append(cancel_times(asyncio.run(session(
                    rt, "This answer is interrupted by the caller while it is being spoken aloud.", 0,
                    {"seed": i, "chunk_size": 4}, cancel_after=0.0))))
            if not args.only_first_audio:
                policy["clause (24)"] = [first_audio(asyncio.run(session(rt, CLAUSED, args.wps, {"seed": i})))
                                         for i in range(max(3, args.trials // 2))]
        loads.append(os.getloadavg()[0])
        if not args.only_first_audio:
            with serving(checkpoint, Path(tmp) / "rt0.log", "--config", "config.realtime.yaml",
                         "--metadata", "first_clause_chars=0") as rt:
                asyncio.run(session(rt, "Warm up.", 0, {"seed": 0}))
                policy["sentence (0)"] = [first_audio(asyncio.run(session(rt, CLAUSED, args.wps, {"seed": i})))
                                          for i in range(max(3, args.trials // 2))]
            loads.append(os.getloadavg()[0])

    name = args.checkpoint.name if args.checkpoint else "tiny (40 tokens an utterance)"
    print(f"Written by `scripts/bench_realtime.py` ({started} UTC), checkpoint {name}, text at {args.wps:g} words a "
          f"second, {args.trials} trials; load average {', '.join(f'{x:.1f}' for x in loads)} (at the start, then as each server stopped).\n")
    print("| measure | realtime | HTTP | realtime / HTTP |")
    print("|---|---|---|---|")
    print(f"| first audio: after the first sentence's last `input.text` / after sending the request | "
          f"{ms(rt_first)} | {ms(http_first)} | {spread(ratios)} |")
    if args.only_first_audio:
        return 0
    print(f"| wait at a segment boundary beyond the text's own ({len(boundary_waits)} boundaries) | "
          f"{ms(boundary_waits)} (max {max(boundary_waits) * 1000:.0f} ms) | | |")
    print(f"| `cancel` to the last audio frame ({len(cancels)} cancels) | {ms([c['last_audio'] for c in cancels])} "
          f"(max {max(c['last_audio'] for c in cancels) * 1000:.0f} ms; frames after it: "
          f"{statistics.median(c['frames_after'] for c in cancels):g}) | | |")
    print(f"| `cancel` to `cancelled` | {ms([c['cancelled'] for c in cancels])} | | |")
    print()
    print("| first segment policy | first segment | first audio after its last word | after the first word |")
    print("|---|---|---|---|")
    for label, runs in policy.items():
        print(f"| {label} | \"{runs[0]['segment']}\" | {ms([r['after_last_word'] for r in runs])} "
              f"| {ms([r['after_first_word'] for r in runs])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
