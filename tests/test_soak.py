"""A bounded soak over HTTP: about 300 mixed requests against a fresh server on the tiny checkpoint.

Valid requests (many field combinations, pcm and wav, seeds, cloned voices), invalid ones (each must
be a 400 with a JSON error and no audio) and dropped ones (the client hangs up after the first chunk),
in blocks run one at a time or four at once. Every valid response must be complete, a fixed seeded
request must keep giving the same bytes, and the server's resident memory after the soak must stay
within 5 % of what it was after warm-up. The figures are printed and written to a JSON file.

Slow: `make test-slow` (or `pytest -m slow tests/test_soak.py -s` to see the figures).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import statistics
import subprocess
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import PYTHON, ROOT, TOKENS
from local_server import free_port, stop, wait_healthy

pytestmark = pytest.mark.slow

SAMPLES_PER_TOKEN = 1024 * 24000 / 22050  # HiFiGAN output samples at 24 kHz per GPT token
WAV_HEADER = 44
THREADS = 4  # config.yaml's predict_concurrency
BLOCK = 20
SOAK_PLAN = {"valid": 100, "invalid": 150, "dropped": 50}
PINNED_REPEATS = 10  # of the valid ones: the pinned request again
RSS_GROWTH_LIMIT = 1.05
TIMEOUT = 180  # per request: a hang guard, not a timing assertion

# Short single sentences: each is one utterance of TOKENS tokens. No Hindi digits and no Czech ordinals:
# XTTS cannot clean those, and they are 400s (test_languages.py).
TEXTS = {
    "en": ["Hello there, this is a soak test.", "Dr. Smith paid $5 for 3 apples.", "It streams while it speaks."],
    "es": ["El Sr. García compró 3 libros."],
    "de": ["Guten Tag, wie geht es Ihnen heute?"],
    "fr": ["Mme. Dupont a 2 chats."],
    "ru": ["У доктора 3 кошки и 25 книг."],
    "pl": ["Dzień dobry, mam 5 kotów."],
    "zh-cn": ["我有3只猫和25本书。"],
    "ja": ["私はコーヒーが好きです。"],
    "ko": ["저는 고양이 3마리가 있어요."],
    "ar": ["لدي 3 قطط."],
    "hi": ["मेरे पास बिल्लियाँ हैं।"],
}
# Over English's 250-character limit: with enable_text_splitting, two pieces of TOKENS tokens each.
LONG_TEXT = " ".join(
    ["This long text has several sentences, and the server must split it before speaking it aloud."] * 3
)
SPEEDS = (1.0, 1.25, 1.5, 2.0)
STUDIO = ("Ana Florence", "Claribel Dervla", "Viktor Eka")
PINNED = {"text": "The same seed gives the same sound.", "seed": 424242, "chunk_size": 10, "speaker": "Viktor Eka"}

# (body, the field the error must name): schema errors, then what only the loaded model can judge.
INVALID: list[tuple[bytes | dict, str | None]] = [
    (b"not json", None),
    (b"[1, 2]", None),
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"text": "x" * 4001}, "text"),
    ({"text": "hi", "language": "xx"}, "language"),
    ({"text": "hi", "chunk_size": 0}, "chunk_size"),
    ({"text": "hi", "chunk_size": "20"}, "chunk_size"),
    ({"text": "hi", "format": "flac"}, "format"),
    ({"text": "hi", "temperature": 0}, "temperature"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "hi", "top_k": 0}, "top_k"),
    ({"text": "hi", "speed": 3.0}, "speed"),
    ({"text": "hi", "first_chunk_size": 1, "speed": 1.5}, "speed"),  # would stretch to no audio frame
    ({"text": "hi", "seed": -1}, "seed"),
    ({"text": "hi", "enable_text_splitting": "true"}, "enable_text_splitting"),
    ({"text": "hi", "bogus": 1}, "bogus"),
    ({"text": "hi", "streamer": "upstream", "first_chunk_size": 2}, "first_chunk_size"),
    ({"text": "hi", "speaker_wav": "not base64!"}, "speaker_wav"),
    ({"text": "hi", "speaker": "Nobody"}, "speaker"),
    ({"text": "word" * 300}, "text"),  # one 'sentence' past XTTS's 400-token limit
]


def tone_clip(seconds: float, f0: float, rate: int = 22050) -> str:
    """A harmonic tone as a base64 16-bit WAV: a reference clip to clone, made here, never downloaded."""
    t = np.arange(int(seconds * rate)) / rate
    wav = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((0.3 * wav / np.abs(wav).max() * 32767).astype("<i2").tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


CLIPS = [tone_clip(3.0, f0) for f0 in (120.0, 180.0, 240.0)]
INVALID.append(({"text": "hi", "speaker_wav": tone_clip(0.5, 150.0)}, "speaker_wav"))  # too short to clone


def describe(body: bytes | dict) -> str:
    """A request body, short enough for a failure message."""
    if isinstance(body, bytes):
        return repr(body[:40])
    shown = {k: ("<clip>" if k == "speaker_wav" else v[:24] if isinstance(v, str) else v) for k, v in body.items()}
    return json.dumps(shown, ensure_ascii=False)


@dataclass
class Result:
    kind: str  # valid, invalid, dropped
    body: str = ""  # describe(body)
    status: int | None = None
    ok: bool = False
    problem: str = ""
    seconds: float = 0.0
    first_audio: float | None = None  # seconds to the first audio bytes (valid ones)
    concurrent: bool = False
    voice_id: str | None = None


class Soak:
    def __init__(self, url: str, rng: random.Random):
        self.url = url
        self.rng = rng
        self.expected: dict[tuple[str, float], int] = {}  # (text kind, speed): samples
        self.pinned: bytes | None = None
        self.voice_ids: list[str] = []
        self.stalled = False
        self.side_problems: list[str] = []  # of requests outside the counted soak

    # -- request bodies --
    def valid_body(self) -> tuple[dict, str, float]:
        rng = self.rng
        if rng.random() < 0.06:
            body, kind = {"text": LONG_TEXT, "enable_text_splitting": True}, "long"
        else:
            language = rng.choice(list(TEXTS))
            body, kind = {"text": rng.choice(TEXTS[language]), "language": language}, "short"
            if rng.random() < 0.2:
                body["enable_text_splitting"] = True  # short text: nothing to split
        voice = rng.random()
        if voice < 0.12:
            body["speaker_wav"] = rng.choice(CLIPS)
        elif voice < 0.2 and self.voice_ids:
            body["voice_id"] = rng.choice(self.voice_ids)
        elif voice < 0.7:
            body["speaker"] = rng.choice(STUDIO)
        speed = 1.0 if kind == "long" else rng.choice(SPEEDS)
        if rng.random() < 0.1:
            body["streamer"] = "upstream"
        elif rng.random() < 0.3:
            # A first chunk of fewer tokens than `speed` is a 400 (it would stretch to no audio frame).
            body["first_chunk_size"] = rng.choice([n for n in (1, 2, 4, 8) if n >= speed])
        body["chunk_size"] = rng.choice([5, 10, 20, 40, 100])
        if rng.random() < 0.3:
            body["format"] = "wav"
        if rng.random() < 0.5:
            body["seed"] = rng.randrange(2**32)
        if rng.random() < 0.5:
            body.update(
                temperature=round(rng.uniform(0.1, 1.5), 3),
                top_p=round(rng.uniform(0.3, 1.0), 3),
                top_k=rng.randint(1, 200),
                repetition_penalty=round(rng.uniform(1.0, 20.0), 2),
                length_penalty=round(rng.uniform(-2.0, 2.0), 2),
            )
        if speed != 1.0 or rng.random() < 0.2:
            body["speed"] = speed
        return body, kind, speed

    def plan(self, valid: int, pinned: int, invalid: int, dropped: int) -> list[tuple]:
        """`valid` requests (`pinned` of them the pinned one), `invalid` and `dropped` ones, shuffled."""
        tasks: list[tuple] = [("valid", *self.valid_body()) for _ in range(valid - pinned)]
        tasks += [("valid", PINNED, "short", 1.0, True)] * pinned
        tasks += [("invalid", *self.rng.choice(INVALID)) for _ in range(invalid)]
        tasks += [("dropped", self.valid_body()[0]) for _ in range(dropped)]
        self.rng.shuffle(tasks)
        return tasks

    # -- one request of each kind --
    def valid(self, body: dict, kind: str, speed: float, pinned: bool = False) -> Result:
        result = Result("valid", describe(body))
        started = time.perf_counter()
        data = bytearray()
        header = WAV_HEADER if body.get("format") == "wav" else 0
        try:
            with requests.post(self.url, json=body, stream=True, timeout=TIMEOUT) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    result.problem = f"{response.status_code}: {response.text[:300]}"
                    return result
                result.voice_id = response.headers.get("x-voice-id")
                if result.voice_id and result.voice_id not in self.voice_ids:
                    self.voice_ids.append(result.voice_id)
                for chunk in response.iter_content(chunk_size=None):
                    data += chunk
                    if result.first_audio is None and len(data) > header:
                        result.first_audio = time.perf_counter() - started
        except requests.RequestException as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
            return result
        finally:
            result.seconds = time.perf_counter() - started
        audio = bytes(data[header:])
        if header and not data.startswith(b"RIFF"):
            result.problem = "no WAV header"
        elif len(audio) % 2:
            result.problem = f"odd byte count {len(audio)}"
        elif pinned and self.pinned is not None and audio != self.pinned:
            result.problem = "the pinned request gave different bytes"
        elif (kind, speed) in self.expected and len(audio) // 2 != self.expected[kind, speed]:
            result.problem = f"{len(audio) // 2} samples, expected {self.expected[kind, speed]} ({kind}, speed {speed})"
        else:
            result.ok = True
            if (kind, speed) not in self.expected:  # learned in warm-up, checked against the token count
                pieces = 2 if kind == "long" else 1
                nominal = pieces * TOKENS * SAMPLES_PER_TOKEN / speed
                assert math.isclose(len(audio) // 2, nominal, abs_tol=pieces * SAMPLES_PER_TOKEN / min(speed, 1.0)), (
                    len(audio) // 2, nominal, body,
                )
                self.expected[kind, speed] = len(audio) // 2
            if pinned and self.pinned is None:
                self.pinned = audio
        return result

    def invalid(self, body: bytes | dict, field: str | None) -> Result:
        result = Result("invalid", describe(body))
        started = time.perf_counter()
        try:
            if isinstance(body, bytes):
                response = requests.post(self.url, data=body, timeout=TIMEOUT)
            else:
                response = requests.post(self.url, json=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
            return result
        result.seconds = time.perf_counter() - started
        result.status = response.status_code
        if response.status_code != 400:
            result.problem = f"{response.status_code}, not 400, for {str(body)[:80]}"
        elif response.headers.get("content-type") != "application/json":
            result.problem = f"content-type {response.headers.get('content-type')} for {str(body)[:80]}"
        elif field is not None and f"`{field}`" not in response.json().get("error", ""):
            result.problem = f"error does not name `{field}`: {response.text[:200]}"
        else:
            result.ok = True
        return result

    def dropped(self, body: dict) -> Result:
        """Hang up as soon as the first audio has arrived."""
        result = Result("dropped", describe(body))
        started = time.perf_counter()
        try:
            response = requests.post(self.url, json=body, stream=True, timeout=TIMEOUT)
            result.status = response.status_code
            header = WAV_HEADER if body.get("format") == "wav" else 0
            received = 0
            for chunk in response.iter_content(chunk_size=None):
                received += len(chunk)
                if received > header:
                    break
            response.close()  # the connection goes with it: the chunked body was not read to its end
            result.ok = response.status_code == 200 and received > header
            result.problem = "" if result.ok else f"{response.status_code}, {received} bytes before hanging up"
        except requests.RequestException as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - started
        return result

    def run(self, task: tuple) -> Result:
        kind, *args = task
        if self.stalled:  # one request timed out: the rest would likely wait as long; give up now
            return Result(kind, describe(args[0]), problem="not sent: an earlier request timed out")
        result = getattr(self, kind)(*args)
        if "Timeout" in result.problem:
            self.stalled = True
        return result


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def settled_rss(pid: int, quiet_s: float = 2.0, limit_s: float = 60.0) -> int:
    """VmRSS in KiB once the server has used no CPU for quiet_s (a dropped stream may still be winding down)."""
    deadline = time.monotonic() + limit_s
    last, quiet_since = cpu_ticks(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.25)
        now = cpu_ticks(pid)
        if now - last > 1:  # a tick or so of housekeeping is idle
            quiet_since = time.monotonic()
        last = now
    return vm_kib(pid, "VmRSS")


def reading(soak: Soak, pid: int) -> int:
    """VmRSS (KiB) after the same last action each time (the pinned request twice), once the server is idle."""
    for _ in range(2):
        result = soak.run(("valid", PINNED, "short", 1.0, True))
        if not result.ok:
            soak.side_problems.append(f"pinned request before reading VmRSS: {result.problem}")
    return settled_rss(pid)


@pytest.fixture()
def soak_server(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """A server of its own: the soak must not share memory figures with the session's server."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "XTTS_CHECKPOINT_DIR": str(tiny_checkpoint), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [PYTHON, "scripts/serve.py", "--port", str(port)], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/v1/models/model", process, log)
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        stop(process)


def run_blocks(
    soak: Soak, tasks: list[tuple], pid: int, rss_log: list[float], first_concurrent: bool = False
) -> list[Result]:
    """Blocks of BLOCK tasks, alternately one by one and four at a time; VmRSS (MiB) noted after each block."""
    results: list[Result] = []
    for number, index in enumerate(range(0, len(tasks), BLOCK)):
        block = tasks[index : index + BLOCK]
        if number % 2 != first_concurrent:
            with ThreadPoolExecutor(THREADS) as pool:
                done = list(pool.map(soak.run, block))
            for result in done:
                result.concurrent = True
        else:
            done = [soak.run(task) for task in block]
        results += done
        rss_log.append(round(vm_kib(pid, "VmRSS") / 1024, 1))
    return results


def summary(results: list[Result]) -> dict:
    by_kind: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        by_kind[result.kind].append(result)
    out = {}
    for kind, group in sorted(by_kind.items()):
        seconds = [r.seconds for r in group]
        out[kind] = {
            "requests": len(group),
            "ok": sum(r.ok for r in group),
            "statuses": dict(Counter(str(r.status) for r in group)),
            "median_s": round(statistics.median(seconds), 3),
            "max_s": round(max(seconds), 3),
        }
    firsts = {
        mode: [r.first_audio for r in by_kind["valid"] if r.first_audio is not None and r.concurrent == concurrent]
        for mode, concurrent in (("one_at_a_time", False), ("four_at_once", True))
    }
    out["valid"]["median_first_audio_s"] = {m: round(statistics.median(v), 3) if v else None for m, v in firsts.items()}
    return out


def test_soak(soak_server, tmp_path):
    process, base, log = soak_server
    soak = Soak(f"{base}/v1/models/model:predict", random.Random(20261123))
    started = time.perf_counter()

    # Warm-up: every path the soak takes once (languages, speeds, long text, wav, upstream, clones,
    # drops, errors), so that lazy loads (cutlet's dictionary, pypinyin, spaCy) count in the baseline.
    warm: list[tuple] = [("valid", PINNED, "short", 1.0, True)]
    for i, (language, texts) in enumerate(TEXTS.items()):
        body = {"text": texts[0], "language": language, "chunk_size": 40, "seed": i}
        speed = SPEEDS[i % len(SPEEDS)]
        if speed != 1.0:
            body["speed"] = speed
        warm.append(("valid", body, "short", speed))
    warm += [
        ("valid", {"text": LONG_TEXT, "enable_text_splitting": True, "seed": 1}, "long", 1.0),
        ("valid", {"text": "Upstream, as a wave file.", "streamer": "upstream", "format": "wav"}, "short", 1.0),
    ]
    warm += [("valid", {"text": "A cloned voice.", "speaker_wav": c, "chunk_size": 40}, "short", 1.0) for c in CLIPS]
    warm += [("invalid", body, field) for body, field in INVALID]
    warm += [("dropped", {"text": "Dropped in warm-up.", "chunk_size": 5})] * 2
    results = [soak.run(task) for task in warm]
    assert soak.pinned is not None and set(soak.expected) == {("short", s) for s in SPEEDS} | {("long", 1.0)}
    # Three blocks of the mix (four at once, one by one, four at once): fewer left the allocator's
    # per-thread arenas short of their steady size, which then showed as growth in the soak.
    warm_mix = soak.plan(valid=3 * 7, pinned=3, invalid=3 * 9, dropped=3 * 4)
    results += run_blocks(soak, warm_mix, process.pid, [], first_concurrent=True)
    problems = [f"{r.kind} {r.body}: {r.problem}" for r in results if not r.ok]
    assert not problems, "\n".join(problems)
    warm_up_s = time.perf_counter() - started
    rss_warm = reading(soak, process.pid)

    # The soak: the plan shuffled, in blocks of BLOCK, every other block four at a time.
    tasks = soak.plan(
        valid=SOAK_PLAN["valid"], pinned=PINNED_REPEATS, invalid=SOAK_PLAN["invalid"], dropped=SOAK_PLAN["dropped"]
    )
    rss_by_block: list[float] = []
    soak_started = time.perf_counter()
    results = run_blocks(soak, tasks, process.pid, rss_by_block)
    soak_s = time.perf_counter() - soak_started
    rss_after = reading(soak, process.pid)

    # Still serving: the pinned request once more, and the health route.
    final = soak.run(("valid", PINNED, "short", 1.0, True))
    healthy = requests.get(f"{base}/v1/models/model", timeout=30).status_code

    errors_logged = [line for line in log.read_text().splitlines() if '"levelname": "ERROR"' in line]
    figures = {
        "requests": summary(results),
        "planned": SOAK_PLAN,
        "warm_up_requests": len(warm) + len(warm_mix) + 2,  # and the pinned one twice before reading VmRSS
        "requests_after_the_soak": 3,  # the pinned one twice before reading VmRSS, then once more
        "warm_up_s": round(warm_up_s, 1),
        "soak_s": round(soak_s, 1),
        "rss_after_warm_up_mib": round(rss_warm / 1024, 1),
        "rss_after_soak_mib": round(rss_after / 1024, 1),
        "rss_ratio": round(rss_after / rss_warm, 4),
        "rss_after_each_block_mib": rss_by_block,
        "peak_rss_mib": round(vm_kib(process.pid, "VmHWM") / 1024, 1),
        # truss logs each 400 raised by predict() as an ERROR with a traceback: counted apart.
        "server_errors_logged": {
            "400s_from_predict": sum('"message": "Model raised HTTPException"' in line for line in errors_logged),
            "other": sum('"message": "Model raised HTTPException"' not in line for line in errors_logged),
        },
    }
    report = tmp_path / "soak.json"
    report.write_text(json.dumps(figures, indent=2))
    print(f"\nsoak figures ({report}):\n{json.dumps(figures, indent=2)}")

    # Every check, so that one failure does not hide the others.
    errors = [f"{r.kind} {r.body}: {r.problem}" for r in results if not r.ok] + soak.side_problems
    if Counter(r.kind for r in results) != Counter(SOAK_PLAN):
        errors.append(f"ran {Counter(r.kind for r in results)}, planned {SOAK_PLAN}")
    if not final.ok:
        errors.append(f"the pinned request after the soak: {final.problem}")
    if healthy != 200 or process.poll() is not None:
        errors.append(f"health {healthy}, process exit code {process.poll()}")
    if rss_after > RSS_GROWTH_LIMIT * rss_warm:
        errors.append(
            f"VmRSS grew from {rss_warm / 1024:.1f} to {rss_after / 1024:.1f} MiB (x{rss_after / rss_warm:.3f}, "
            f"limit x{RSS_GROWTH_LIMIT}); after each block: {rss_by_block}"
        )
    assert not errors, "\n".join(errors)
