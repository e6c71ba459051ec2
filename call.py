#!/usr/bin/env python3
"""Stream speech from the XTTS v2 endpoint and play and/or save it as it arrives.

Examples:
  python call.py "Hello there."                       # local server, play with ffplay
  echo "Hi" | python call.py --no-play --out hi.wav   # text from stdin, save a WAV
  BASETEN_API_KEY=... python call.py --model-id abc123 "Hello from Baseten."
  python call.py --voice me.wav "Cloned."              # clone; prints the voice id
  python call.py --voice-id 3f2a... "Again, no upload."  # reuse the cached voice
  python call.py --voice me.wav --voice-name Me "Hi."  # register it: --speaker Me from then on
  python call.py --out hi.mp3 "Hi."                    # MP3 (also .ogg, .ulaw, .alaw): bytes as sent
  python call.py --format mulaw "Phone audio."        # G.711 mu-law at 8 kHz, played as it arrives
  python call.py --list-voices
  python call.py --realtime --words-per-second 3 "Hi. Text sent a word at a time, as an LLM streams it."
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import wave
from urllib.parse import quote, urlsplit

import requests

DEFAULT_RATE = 24000
WAV_HEADER_BYTES = 44
API_KEY_ENV = "BASETEN_API_KEY"
FORMATS = ("pcm", "wav", "mulaw", "alaw", "opus", "mp3")
RATES = (8000, 16000, 22050, 24000, 44100, 48000)
# --out's extension when it names an encoded format; any other name gets 16-bit PCM (a WAV, or raw for .pcm).
OUT_FORMATS = {".ogg": "opus", ".opus": "opus", ".mp3": "mp3", ".ulaw": "mulaw", ".mulaw": "mulaw",
               ".alaw": "alaw"}
# The response's Content-Type (without parameters) to the format of its bytes.
CONTENT_TYPES = {"audio/pcm": "pcm", "audio/wav": "wav", "audio/pcmu": "mulaw", "audio/basic": "mulaw",
                 "audio/pcma": "alaw", "audio/ogg": "opus", "audio/mpeg": "mp3"}
# ffplay's input format for each: PCM and WAV reach it as bare s16le (the WAV header is stripped).
FFPLAY_FORMATS = {"pcm": "s16le", "wav": "s16le", "mulaw": "mulaw", "alaw": "alaw", "opus": "ogg", "mp3": "mp3"}

# Optional request fields (argparse dest == JSON name). Only fields the user set are sent,
# so the server's own defaults stay authoritative.
PAYLOAD_FIELDS = ("language", "speaker", "voice_id", "voice_name", "chunk_size", "first_chunk_size", "streamer",
                  "format", "sample_rate", "temperature", "top_p", "top_k", "repetition_penalty", "length_penalty",
                  "speed", "seed")


def default_local_url(realtime: bool = False) -> str:
    port = os.environ.get('PORT') or '8080'
    return f"ws://127.0.0.1:{port}/v1/websocket" if realtime else f"http://127.0.0.1:{port}/v1/models/model:predict"


def build_url(url: str | None = None, model_id: str | None = None,
              environment: str = "production", realtime: bool = False) -> str:
    if url:
        return url
    if model_id:
        base = f"{'wss' if realtime else 'https'}://model-{quote(model_id, safe='')}.api.baseten.co"
        route = "websocket" if realtime else "predict"
        if environment == "development":
            return f"{base}/development/{route}"  # development is not a named environment
        return f"{base}/environments/{quote(environment, safe='')}/{route}"
    return default_local_url(realtime)


def build_payload(args: argparse.Namespace) -> dict:
    payload: dict = {"text": args.text}
    for field in PAYLOAD_FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            payload[field] = value
    if getattr(args, "split", False):
        payload["enable_text_splitting"] = True
    if getattr(args, "voice", None):
        clips = [read_clip(path) for path in args.voice]
        payload["speaker_wav"] = clips[0] if len(clips) == 1 else clips
    return payload


def read_clip(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def shown_payload(payload: dict) -> str:
    """The body for --verbose, with clips shortened to their size: they can be megabytes."""
    def short(clip: str) -> str:
        return f"<{len(clip)} bytes of base64>"

    shown = dict(payload)
    if isinstance(shown.get("speaker_wav"), str):
        shown["speaker_wav"] = short(shown["speaker_wav"])
    elif "speaker_wav" in shown:
        shown["speaker_wav"] = [short(c) for c in shown["speaker_wav"]]
    return json.dumps(shown, ensure_ascii=False)


def build_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Api-Key {api_key}"
    return headers


def ffplay_command(rate: int, fmt: str = "pcm") -> list[str]:
    # Tiny probe/analysis windows and no input buffering so playback starts on the first chunk.
    # Raw formats carry no rate or channel count: ffplay must be told (Ogg and MP3 say it themselves).
    raw = ["-ar", str(rate), "-ac", "1"] if fmt in ("pcm", "wav", "mulaw", "alaw") else []
    return ["ffplay", "-nodisp", "-autoexit", "-loglevel", "error", "-fflags", "nobuffer",
            "-flags", "low_delay", "-probesize", "32", "-analyzeduration", "0",
            "-f", FFPLAY_FORMATS[fmt], *raw, "-i", "-"]


class PcmAligner:
    """Turns raw response chunks into whole 16-bit samples, dropping a leading WAV header."""

    def __init__(self, expect_wav_header: bool) -> None:
        self._header_left = WAV_HEADER_BYTES if expect_wav_header else 0
        self._header = bytearray()
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._header_left:
            # The header may itself be split across chunks.
            take = chunk[:self._header_left]
            self._header += take
            self._header_left -= len(take)
            chunk = chunk[len(take):]
            if not self._header_left:
                h = bytes(self._header)
                if h[0:4] != b"RIFF" or h[8:12] != b"WAVE":
                    raise ValueError("server sent format=wav but the stream lacks a RIFF/WAVE header")
        # Chunk boundaries need not fall on sample boundaries; hold an odd byte for the next chunk.
        data = self._carry + chunk
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        return data[:cut]

    def finish(self) -> None:
        if self._header_left:
            raise CutOff("the stream ended inside the WAV header")
        if self._carry:
            raise CutOff("the stream ended inside a 16-bit sample")


class CutOff(Exception):
    """The audio stopped before the server finished it."""


class FfplaySink:
    """Plays the audio through ffplay's stdin as it arrives."""

    def __init__(self, rate: int, fmt: str = "pcm") -> None:
        self._proc = subprocess.Popen(ffplay_command(rate, fmt), stdin=subprocess.PIPE)
        self._alive = True

    def write(self, pcm: bytes) -> None:
        if not self._alive:
            return
        try:
            self._proc.stdin.write(pcm)
            self._proc.stdin.flush()  # don't let a pipe buffer delay the first sound
        except BrokenPipeError:
            self._alive = False
            print("warning: ffplay exited early; playback stopped", file=sys.stderr)

    def close(self) -> None:
        # EOF on stdin lets -autoexit finish playing the tail before we return.
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        self._proc.wait()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class FileSink:
    """Writes --out while streaming, under NAME.part until the stream is complete: a cut-off or
    interrupted run never leaves a file under the name asked for.

    16-bit PCM becomes a WAV (raw for .pcm); encoded formats (Opus, MP3, G.711) are the bytes as sent.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.part = path + ".part"
        self._fh = open(self.part, "wb")  # before the request: an unwritable --out costs nothing
        self._wav: wave.Wave_write | None = None
        self._closed = False
        self.saved = False

    def start(self, fmt: str, rate: int) -> None:
        if fmt in ("pcm", "wav") and not self.path.lower().endswith(".pcm"):
            self._wav = wave.open(self._fh, "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate)

    def write(self, data: bytes) -> None:
        if self._wav is not None:
            self._wav.writeframes(data)  # keeps the header's sizes true as it goes
        else:
            self._fh.write(data)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._wav is not None:
                self._wav.close()
            self._fh.close()

    def close(self) -> None:
        """The stream is complete: the file takes its name."""
        self._close()
        os.replace(self.part, self.path)
        self.saved = True

    def abort(self) -> None:
        if not self._closed:
            self._close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.part)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error is (argparse prints its whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        description="Stream speech from the XTTS v2 Truss endpoint; play it and/or save it.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="text to speak (default: --file, else stdin)")
    p.add_argument("--file", metavar="PATH", help="read the text from a UTF-8 file")
    p.add_argument("--list-voices", action="store_true", help="list the server's voices and languages, then exit")
    t = p.add_argument_group("target (default: http://127.0.0.1:$PORT/v1/models/model:predict,"
                             " PORT defaults to 8080)")
    x = t.add_mutually_exclusive_group()
    x.add_argument("--url", help="full predict URL")
    x.add_argument("--model-id", metavar="ID", help=f"Baseten model id (needs ${API_KEY_ENV})")
    t.add_argument("--environment", default="production", metavar="ENV",
                   help="Baseten environment for --model-id: production (default), "
                        "development, or any named environment")
    g = p.add_argument_group("synthesis options (omitted ones use the server's defaults)")
    g.add_argument("--language", help="language code, e.g. en; or auto: detected from the text")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--speaker", help="built-in speaker name (see --list-voices)")
    v.add_argument("--voice", action="append", metavar="CLIP",
                   help="clone from this WAV/FLAC/Ogg/MP3 (1-60 s); repeat for several clips of one voice")
    v.add_argument("--voice-id", metavar="ID", help="reuse a cloned voice by the id a --voice call printed")
    g.add_argument("--voice-name", metavar="NAME",
                   help="register the --voice clip under this name; later calls use --speaker NAME, on every "
                        "replica that shares the server's voice store")
    g.add_argument("--chunk-size", type=int, metavar="N", help="tokens per streamed chunk")
    g.add_argument("--first-chunk-size", type=int, metavar="N", help="tokens in the first chunk (windowed streamer)")
    g.add_argument("--streamer", choices=["windowed", "upstream"], help="server streamer (default: windowed)")
    g.add_argument("--format", choices=FORMATS,
                   help="wire format: pcm (s16le), wav, mulaw or alaw (G.711), opus (Ogg) or mp3 "
                        "(server default: pcm; --out x.mp3, .ogg, .ulaw or .alaw picks it)")
    g.add_argument("--sample-rate", type=int, choices=RATES, metavar="HZ",
                   help="output rate: " + ", ".join(map(str, RATES)) + " (server default: 24000, 8000 for G.711)")
    for flag, typ, hlp in (("--temperature", float, "sampling temperature"),
                           ("--top-p", float, "nucleus sampling threshold"),
                           ("--top-k", int, "top-k sampling cutoff"),
                           ("--repetition-penalty", float, "penalty for repeated tokens"),
                           ("--length-penalty", float, "length penalty"),
                           ("--speed", float, "speaking rate (1.0 = normal)")):
        g.add_argument(flag, type=typ, metavar="N" if typ is int else "X", help=hlp)
    g.add_argument("--split", action="store_true", help="enable sentence splitting on the server")
    g.add_argument("--seed", type=int, help="seed for reproducible output")
    r = p.add_argument_group("realtime (the websocket deployment, config.realtime.yaml)")
    r.add_argument("--realtime", action="store_true",
                   help="send the text a word at a time over the websocket, as an LLM streams it "
                        "(default URL ws://127.0.0.1:$PORT/v1/websocket)")
    r.add_argument("--words-per-second", type=float, default=3.0, metavar="X",
                   help="how fast --realtime sends words (default 3; 0: all at once)")
    o = p.add_argument_group("output")
    o.add_argument("--no-play", action="store_true", help="don't play through ffplay")
    o.add_argument("--out", metavar="FILE",
                   help="save audio while streaming: .mp3, .ogg, .ulaw, .alaw as sent, .pcm raw, else WAV")
    o.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="max wait for the server between bytes (default 300; cold starts are slow)")
    o.add_argument("-v", "--verbose", action="store_true",
                   help="print the URL and request body (never the API key)")
    return p


def read_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.text is not None and args.file:
        parser.error("give the text either as an argument or with --file, not both")
    if args.text is not None:
        text = args.text
    elif args.file:
        try:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            parser.error(f"cannot read {args.file}: {e.strerror}")
    elif sys.stdin is None or sys.stdin.isatty():
        parser.error("no text: pass TEXT, use --file PATH, or pipe text on stdin")
    else:
        text = sys.stdin.read()
    text = text.strip()
    if not text:
        parser.error("the text is empty")
    return text


def finish(sinks: list, out) -> int:
    """Close every sink (ffplay's close waits for playback to finish; the file takes its name)."""
    for sink in sinks:
        sink.close()
    if out:
        print(f"saved {out.path}", file=sys.stderr)
    return 0


def interrupted(out) -> int:
    print("\ninterrupted" + (f"; nothing saved to {out.path}" if out and not out.saved else ""), file=sys.stderr)
    return 130


def fail(message: str, code: int = 1) -> int:
    """Every error is one line on stderr, saying what to do where we can tell."""
    print(f"error: {message}", file=sys.stderr)
    return code


def http_error(resp: requests.Response) -> str:
    try:
        detail = resp.json().get("error") or resp.text
    except (ValueError, AttributeError):
        detail = resp.text
    detail = " ".join(str(detail).split())[:500] or "(no body)"
    line = f"server returned HTTP {resp.status_code} {resp.reason or ''}".rstrip() + f": {detail}"
    if resp.status_code in (401, 403):
        line += f" (check that ${API_KEY_ENV} is valid for this model)"
    elif resp.headers.get("Retry-After"):
        line += f" (retry after {resp.headers['Retry-After']} s)"
    return line


def connection_error(url: str, exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer from {url} within the timeout; raise --timeout if the server is starting"
    if isinstance(exc, requests.ConnectionError):
        return not_connected(url)
    return f"request to {url} failed: {exc}"


def not_connected(url: str) -> str:
    """Where a local server is down, the command that starts one (the realtime one for ws:// URLs)."""
    if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        kind = "-realtime" if urlsplit(url).scheme in ("ws", "wss") else ""
        return (f"could not connect to {url}; is the local server running? "
                f"Start it with `make serve{kind}` (or `make demo{kind}`)")
    return f"could not connect to {url}; check the address and your network"


def check_url(url: str, realtime: bool = False) -> str | None:
    parts = urlsplit(url)
    if realtime:
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            return f"--url needs a websocket address like ws://127.0.0.1:8080/v1/websocket, not {url!r}"
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"--url needs a full address like http://127.0.0.1:8080/v1/models/model:predict, not {url!r}"
    return None


def check_out(path: str, fmt: str | None) -> tuple[str | None, str | None]:
    """(the format to ask for, an error): --out's extension picks an encoded format or must agree with --format."""
    if not path.strip():
        return fmt, "--out needs a file name, e.g. --out speech.wav"
    ext = os.path.splitext(path)[1].lower()
    named = OUT_FORMATS.get(ext)
    if os.path.isdir(path):
        return fmt, f"--out {path} is a directory; give a file name, e.g. {os.path.join(path, 'speech.wav')}"
    if named and fmt and fmt != named:
        return fmt, f"--out {path} names {named} but --format is {fmt}; change one of them"
    if not named and fmt in ("mulaw", "alaw", "opus", "mp3") and ext in (".wav", ".pcm"):
        return fmt, f"--format {fmt} is not 16-bit PCM, so --out {path} cannot hold it; name it with .{_EXT[fmt]}"
    return fmt or named, None


_EXT = {"mulaw": "ulaw", "alaw": "alaw", "opus": "ogg", "mp3": "mp3"}


def response_format(resp: requests.Response, asked: str | None) -> str:
    content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return CONTENT_TYPES.get(content_type, asked or "pcm")


def stream(url: str, payload: dict, headers: dict[str, str], args: argparse.Namespace,
           out: FileSink | None = None) -> int:
    sinks: list[FfplaySink | FileSink] = [out] if out else []
    answered = False  # a 200 came: any failure after it cuts the audio off
    t0 = time.perf_counter()
    first: float | None = None
    audio_bytes = 0
    rate, fmt = DEFAULT_RATE, "pcm"
    try:
        with requests.post(url, json=payload, headers=headers, stream=True,
                           timeout=(10, args.timeout)) as resp:
            if resp.status_code >= 400:
                return fail(http_error(resp))
            answered = True
            rate = int(resp.headers.get("X-Sample-Rate") or DEFAULT_RATE)
            fmt = response_format(resp, payload.get("format"))
            aligner = PcmAligner(fmt == "wav") if fmt in ("pcm", "wav") else None
            if out:
                out.start(fmt, rate)
            if not args.no_play:
                sinks.append(FfplaySink(rate, fmt))
            for chunk in resp.iter_content(chunk_size=None):
                data = aligner.feed(chunk) if aligner else chunk
                if not data:
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                audio_bytes += len(data)
                for sink in sinks:
                    sink.write(data)
            if aligner:
                aligner.finish()
            total = time.perf_counter() - t0
            voice_id = resp.headers.get("X-Voice-Id")
            voice_cache = resp.headers.get("X-Voice-Cache", "?")
            voice_name, voice_store = resp.headers.get("X-Voice-Name"), resp.headers.get("X-Voice-Store")
        # Compressed formats' length is not known without decoding them.
        bytes_per_second = {"pcm": 2 * rate, "wav": 2 * rate, "mulaw": rate, "alaw": rate}.get(fmt)
        audio_s = audio_bytes / bytes_per_second if bytes_per_second else None
        print((f"voice id:          {voice_id} (cache {voice_cache}; reuse with --voice-id {voice_id})\n"
               if voice_id else "")
              + (f"voice name:        {voice_name} ({'shared store' if voice_store == 'shared' else 'this replica only'}; "
                 f"use with --speaker {shlex.quote(voice_name)})\n" if voice_name else "")
              + "first audio chunk: "
              + (f"{first * 1000:.0f} ms\n" if first is not None else "n/a (no audio)\n")
              + f"total time:        {total:.2f} s\n"
              + (f"audio seconds:     {audio_s:.2f} s ({audio_bytes} bytes, {fmt} @ {rate} Hz)\n"
                 if audio_s is not None else f"audio received:    {audio_bytes} bytes ({fmt} @ {rate} Hz)\n")
              + "real-time factor:  " + (f"{total / audio_s:.3f}" if audio_s else "n/a")
              + " (total time / audio seconds; < 1 is faster than real time)", file=sys.stderr)
        return finish(sinks, out)
    except KeyboardInterrupt:
        return interrupted(out)
    except (requests.RequestException, CutOff) as e:
        if not answered:
            return fail(connection_error(url, e))
        saved = f"; nothing saved to {out.path}" if out else ""
        reason = e if isinstance(e, CutOff) else "the connection broke"
        return fail(f"audio cut off after {audio_bytes} bytes: {reason}{saved}. The server's log says why; try again")
    except (OSError, ValueError) as e:  # --out failed mid-write, ffplay failed to start, not a WAV
        return fail(str(e))
    finally:
        # On any early exit: stop ffplay now, and remove the partial file.
        for sink in sinks:
            sink.abort()


def words(text: str) -> list[str]:
    """The text as an LLM streams it: one word a message, each after the first with its leading space."""
    return [word if i == 0 else " " + word for i, word in enumerate(text.split())]


def sent_by(segment_text: str, sends: list[tuple[float, str]]) -> float | None:
    """When the last input.text of `segment_text` (the server's first segment) was sent: the first send
    after which the text sent so far starts with it. `sends`: (time, all text sent so far)."""
    for at, so_far in sends:
        if so_far.lstrip()[: len(segment_text)] == segment_text:
            return at
    return None


async def realtime_session(url: str, config: dict, headers: dict[str, str], text_words: list[str],
                           words_per_second: float, on_audio, on_event=None, timeout: float = 300.0) -> dict:
    """One session: config, the words at `words_per_second`, input.done; audio to on_audio(bytes) as it
    arrives. Returns what was measured; raises RuntimeError on an `error` event or an abnormal close."""
    import asyncio

    from websockets.asyncio.client import connect

    sends: list[tuple[float, str]] = []
    result: dict = {"segments": [], "audio_bytes": 0, "first_audio_after_first_segment_s": None}
    auth = {k: v for k, v in headers.items() if k == "Authorization"}

    async with connect(url, additional_headers=auth, max_size=None, open_timeout=timeout) as ws:
        async def send_words() -> None:
            await ws.send(json.dumps({"type": "session.config", **config}))
            so_far = ""
            for word in text_words:
                await ws.send(json.dumps({"type": "input.text", "text": word}))
                so_far += word
                sends.append((time.perf_counter(), so_far))
                if words_per_second > 0:
                    await asyncio.sleep(1 / words_per_second)
            await ws.send(json.dumps({"type": "input.done"}))

        sender = asyncio.create_task(send_words())
        current = None
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout)
                now = time.perf_counter()
                if isinstance(message, bytes):
                    result["audio_bytes"] += len(message)
                    if current is not None and current["first_audio"] is None:
                        current["first_audio"] = now
                    on_audio(message)
                    continue
                event = json.loads(message)
                if on_event:
                    on_event(event)
                if event["type"] == "error":
                    raise RuntimeError(f"the server said: `{event.get('field')}`: {event.get('message')}")
                if event["type"] == "session.ready":
                    result.update(format=event["format"], sample_rate=event["sample_rate"], voice_id=event.get("voice_id"))
                elif event["type"] == "audio.start":
                    current = {"segment": event["segment"], "text": event["text"], "start": now, "first_audio": None}
                elif event["type"] == "audio.done":
                    current.update(end=now, samples=event["samples"])
                    result["segments"].append(current)
                elif event["type"] == "session.done":
                    # The turn is over; the session would wait for the next one, so this client ends it.
                    result.update(audio_seconds=event["audio_seconds"])
                    await ws.send(json.dumps({"type": "session.close"}))
                    break
        finally:
            sender.cancel()
    if result["segments"] and result["segments"][0]["first_audio"] is not None:
        spoken = sent_by(result["segments"][0]["text"], sends)
        if spoken is not None:
            result["first_audio_after_first_segment_s"] = result["segments"][0]["first_audio"] - spoken
    return result


def realtime(url: str, payload: dict, headers: dict[str, str], args: argparse.Namespace,
             out: FileSink | None = None) -> int:
    """--realtime: stream the text word by word over the websocket; play and/or save the audio as it comes."""
    import asyncio

    try:
        import websockets
    except ImportError:
        return fail("--realtime needs the websockets package: pip install websockets")
    config = {k: v for k, v in payload.items() if k != "text"}
    sinks: list[FfplaySink | FileSink] = [out] if out else []
    fmt, rate = config.get("format", "pcm"), config.get("sample_rate") or (8000 if config.get("format") in ("mulaw", "alaw") else DEFAULT_RATE)
    if out:
        out.start(fmt, rate)
    try:
        if not args.no_play:
            sinks.append(FfplaySink(rate, fmt))

        def on_event(event: dict) -> None:
            if event["type"] == "audio.start":
                print(f"segment {event['segment']}: {event['text']}", file=sys.stderr)
            elif args.verbose:
                print(json.dumps(event), file=sys.stderr)

        def on_audio(data: bytes) -> None:
            for sink in sinks:
                sink.write(data)

        result = asyncio.run(realtime_session(url, config, headers, words(args.text), args.words_per_second,
                                              on_audio, on_event, args.timeout))
        after = result["first_audio_after_first_segment_s"]
        print(f"first audio:       {after * 1000:.0f} ms after the first segment's last word was sent\n"
              if after is not None else "first audio:       n/a (no audio)\n", end="", file=sys.stderr)
        print(f"segments:          {len(result['segments'])}, {result.get('audio_seconds', 0):.2f} s of audio "
              f"({result['audio_bytes']} bytes, {fmt} @ {rate} Hz)", file=sys.stderr)
        return finish(sinks, out)
    except KeyboardInterrupt:
        return interrupted(out)
    except ConnectionRefusedError:  # nothing listens there (asyncio's connect raises it; no bytes were sent)
        return fail(not_connected(url))
    except (OSError, websockets.exceptions.WebSocketException, RuntimeError, TimeoutError) as e:
        return fail(f"realtime session failed: {e}")
    finally:
        for sink in sinks:
            sink.abort()


def list_voices(url: str, headers: dict[str, str], timeout: float) -> int:
    try:
        resp = requests.post(url, json={"list": "voices"}, headers=headers, timeout=(10, timeout))
    except requests.RequestException as e:
        return fail(connection_error(url, e))
    if resp.status_code >= 400:
        return fail(http_error(resp))
    try:
        info = resp.json()
        voices, default, languages, cloning = (info["voices"], info["default_speaker"], info["languages"],
                                               info["cloning"])
    except (ValueError, KeyError, TypeError):
        return fail(f"{url} answered, but not with a voice list; is it this model's predict URL?")
    for voice in voices:
        mark = " (default)" if voice["name"] == default else ""
        print(f"{voice['name']}  [{voice['source']}]{mark}")
    print(f"\nlanguages: {' '.join(languages)}")
    print(f"cloning: {', '.join(cloning['formats'])} clips of {cloning['seconds'][0]:g}-{cloning['seconds'][1]:g} s; "
          f"{cloning['cached_voices']} cloned voices cached")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    if args.model_id and not api_key:
        return fail(f"--model-id needs an API key; set {API_KEY_ENV} (export {API_KEY_ENV}=...)", 2)
    url = build_url(args.url, args.model_id, args.environment, args.realtime)
    if error := check_url(url, args.realtime):
        return fail(error, 2)
    if args.realtime and (args.list_voices or args.split or args.streamer):
        return fail("--list-voices, --split and --streamer are for the HTTP endpoint, not --realtime", 2)
    if args.voice_name and not args.voice:
        return fail("--voice-name names the voice of a clip: give it with --voice CLIP", 2)
    if args.list_voices:
        return list_voices(url, build_headers(api_key), args.timeout)
    args.text = read_text(args, parser)
    if args.out is not None:
        args.format, error = check_out(args.out, args.format)
        if error:
            return fail(error, 2)
    try:
        payload = build_payload(args)
    except OSError as e:
        parser.error(f"cannot read voice clip {e.filename}: {e.strerror}")
    if not args.no_play and shutil.which("ffplay") is None:
        return fail("ffplay not found on PATH (it ships with ffmpeg). Install ffmpeg, "
                    "or skip playback and save the audio: --no-play --out speech.wav")
    if args.verbose:
        print(f"{'CONNECT' if args.realtime else 'POST'} {url}", file=sys.stderr)
        print(f"auth: {'Api-Key <redacted>' if api_key else 'none'}", file=sys.stderr)
        print(f"body: {shown_payload(payload)}", file=sys.stderr)
    # Opened before anything is sent: a missing or unwritable directory costs no request.
    try:
        out = FileSink(args.out) if args.out is not None else None
    except OSError as e:
        return fail(f"cannot write --out {args.out}: {e.strerror}; check that its directory exists and is writable", 2)
    if args.realtime:
        return realtime(url, payload, build_headers(api_key), args, out)
    return stream(url, payload, build_headers(api_key), args, out)


if __name__ == "__main__":
    sys.exit(main())
