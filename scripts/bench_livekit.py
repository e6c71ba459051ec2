"""Time to first audio through LiveKit's Baseten plugin against call.py --realtime, for the same text on
the same realtime server (README "Use with LiveKit Agents"; the closing note of issue 23).

Runs interleaved, so that drift on a shared machine falls on every client alike:
  - plugin, cold: a new baseten.TTS, so its turn dials the socket and sends session.config;
  - plugin, warm: the next turn of that TTS, on its parked socket (what a voice agent's later turns get);
  - call.py: call.realtime_session, a new socket with session.config and the text at once.
Each is timed from the moment the text is handed over (push_text; realtime_session called) to its first
audio byte. Medians over --runs.

    python scripts/bench_livekit.py --url ws://127.0.0.1:8080/v1/websocket [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import call  # noqa: E402

TEXT = "Hello, thanks for calling. Your order will arrive on Tuesday."


async def plugin_turn(tts, text: str) -> float:
    from livekit.agents import APIConnectOptions

    stream = tts.stream(conn_options=APIConnectOptions(max_retry=0, timeout=60))
    started = time.perf_counter()
    stream.push_text(text)
    stream.flush()
    stream.end_input()
    first = None
    async for _ in stream:
        if first is None:
            first = time.perf_counter() - started
    await stream.aclose()
    return first


async def plugin_pair(url: str, text: str) -> tuple[float, float]:
    from livekit.plugins import baseten

    async with aiohttp.ClientSession() as session:
        tts = baseten.TTS(model="qwen3-tts", model_endpoint=url, api_key="local", voice="Ana Florence",
                          language="en", http_session=session)
        cold = await plugin_turn(tts, text)
        warm = await plugin_turn(tts, text)
        await tts.aclose()
    return cold, warm


async def call_py(url: str, text: str) -> float:
    first: list[float] = []
    started = time.perf_counter()

    def on_audio(_: bytes) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    await call.realtime_session(url, {"language": "en", "speaker": "Ana Florence"}, {}, call.words(text), 0, on_audio)
    return first[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/v1/websocket")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    await call_py(args.url, args.text)  # warm-up, not counted
    times: dict[str, list[float]] = {"plugin_cold": [], "plugin_warm": [], "call_py": []}
    for _ in range(args.runs):
        cold, warm = await plugin_pair(args.url, args.text)
        times["plugin_cold"].append(cold)
        times["plugin_warm"].append(warm)
        times["call_py"].append(await call_py(args.url, args.text))
    result = {name: {"median_ms": statistics.median(v) * 1000, "runs_ms": [round(x * 1000) for x in v]} for name, v in times.items()}
    for name, r in result.items():
        print(f"{name:12} median {r['median_ms']:6.0f} ms   runs {r['runs_ms']}")
    if args.json:
        args.json.write_text(json.dumps({"text": args.text, **result}, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
