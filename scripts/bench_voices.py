#!/usr/bin/env python
"""Time to first chunk with a cloned voice served from the cache, against a studio speaker.

A cached voice should cost nothing extra: its latents are looked up by id, not recomputed. Runs
alternate between the two so that machine noise hits both alike; the output gives medians, the
same-run ratio, and what the first (uncached) clone cost.

    python scripts/bench_voices.py --checkpoint checkpoints/tiny --runs 15
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench import load_model  # noqa: E402

from model.schema import SynthesisRequest  # noqa: E402

TEXT = "Streaming speech starts before the sentence is done."


def first_chunk_seconds(model, **fields) -> float:
    started = time.perf_counter()
    response = model.predict(SynthesisRequest(text=TEXT, seed=0, **fields))

    async def first() -> None:
        body = response.body_iterator
        await anext(body)
        await body.aclose()

    asyncio.run(first())
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)

    model = load_model(args.checkpoint)
    speech = subprocess.run(
        ["espeak-ng", "--stdout", "A reference voice for the cache benchmark, about six seconds of speech."],
        capture_output=True, check=True,
    ).stdout
    clip = base64.b64encode(speech).decode()
    miss = first_chunk_seconds(model, speaker_wav=clip)
    voice_id = model._service.voices.cache.clone([speech]).voice_id
    computed = model._service.voices.cache.computed

    studio, cached = [], []
    for i in range(args.runs):
        studio.append(first_chunk_seconds(model, speaker="Ana Florence"))
        cached.append(first_chunk_seconds(model, voice_id=voice_id))
        print(f"run {i + 1}/{args.runs}: studio {studio[-1] * 1000:.0f} ms, cached clone {cached[-1] * 1000:.0f} ms",
              file=sys.stderr)
    assert model._service.voices.cache.computed == computed, "a cached voice was recomputed"

    ratios = [c / s for c, s in zip(cached, studio)]
    print(f"\ncheckpoint {args.checkpoint}, {args.runs} interleaved runs, time to first chunk (medians):")
    print(f"  studio speaker:       {statistics.median(studio) * 1000:.0f} ms")
    print(f"  cached cloned voice:  {statistics.median(cached) * 1000:.0f} ms")
    print(f"  same-run ratio cached/studio: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"  first request with the clip (latents computed): {miss * 1000:.0f} ms; latent computations: {computed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
