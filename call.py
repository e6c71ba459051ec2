#!/usr/bin/env python3
"""Stream speech from the XTTS v2 endpoint and play and/or save it as it arrives.

Examples:
  python call.py "Hello there."                       # local server, play with ffplay
  echo "Hi" | python call.py --no-play --out hi.wav   # text from stdin, save a WAV
  BASETEN_API_KEY=... python call.py --model-id abc123 "Hello from Baseten."
  python call.py --voice me.wav "Cloned."              # clone; prints the voice id
  python call.py --voice-id 3f2a... "Again, no upload."  # reuse the cached voice
  python call.py --list-voices
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
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

# Optional request fields (argparse dest == JSON name). Only fields the user set are sent,
# so the server's own defaults stay authoritative.
PAYLOAD_FIELDS = ("language", "speaker", "voice_id", "chunk_size", "first_chunk_size", "streamer",
                  "format", "temperature", "top_p", "top_k", "repetition_penalty", "length_penalty",
                  "speed", "seed")


def default_local_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('PORT') or '8080'}/v1/models/model:predict"


def build_url(url: str | None = None, model_id: str | None = None,
              environment: str = "production") -> str:
    if url:
        return url
    if model_id:
        base = f"https://model-{quote(model_id, safe='')}.api.baseten.co"
        if environment == "development":
            return f"{base}/development/predict"  # development is not a named environment
        return f"{base}/environments/{quote(environment, safe='')}/predict"
    return default_local_url()


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


def ffplay_command(rate: int) -> list[str]:
    # Tiny probe/analysis windows and no input buffering so playback starts on the first chunk.
    return ["ffplay", "-nodisp", "-autoexit", "-loglevel", "error", "-fflags", "nobuffer",
            "-flags", "low_delay", "-probesize", "32", "-analyzeduration", "0",
            "-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "-"]


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
            raise ValueError("stream ended inside the WAV header")
        if self._carry:
            print("warning: stream ended with an odd trailing byte; dropped it", file=sys.stderr)


class FfplaySink:
    """Plays PCM through ffplay's stdin as it arrives."""

    def __init__(self, rate: int) -> None:
        self._proc = subprocess.Popen(ffplay_command(rate), stdin=subprocess.PIPE)
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
    """Writes PCM to FILE while streaming: raw for .pcm, otherwise a WAV container."""

    def __init__(self, path: str, rate: int) -> None:
        self.path = path
        self._raw = path.lower().endswith(".pcm")
        if self._raw:
            self._fh = open(path, "wb")
        else:
            self._wav = wave.open(path, "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate)
        self._closed = False

    def write(self, pcm: bytes) -> None:
        if self._raw:
            self._fh.write(pcm)
        else:
            # writeframes (not ...raw) re-patches the sizes, so even a killed run leaves a valid WAV.
            self._wav.writeframes(pcm)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            (self._fh if self._raw else self._wav).close()

    # A truncated but valid file is more useful than a half-written one.
    abort = close


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    g.add_argument("--language", help="language code, e.g. en")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--speaker", help="built-in speaker name (see --list-voices)")
    v.add_argument("--voice", action="append", metavar="CLIP",
                   help="clone from this WAV/FLAC/Ogg/MP3 (1-60 s); repeat for several clips of one voice")
    v.add_argument("--voice-id", metavar="ID", help="reuse a cloned voice by the id a --voice call printed")
    g.add_argument("--chunk-size", type=int, metavar="N", help="tokens per streamed chunk")
    g.add_argument("--first-chunk-size", type=int, metavar="N", help="tokens in the first chunk (windowed streamer)")
    g.add_argument("--streamer", choices=["windowed", "upstream"], help="server streamer (default: windowed)")
    g.add_argument("--format", choices=["pcm", "wav"], help="wire format (server default: pcm)")
    for flag, typ, hlp in (("--temperature", float, "sampling temperature"),
                           ("--top-p", float, "nucleus sampling threshold"),
                           ("--top-k", int, "top-k sampling cutoff"),
                           ("--repetition-penalty", float, "penalty for repeated tokens"),
                           ("--length-penalty", float, "length penalty"),
                           ("--speed", float, "speaking rate (1.0 = normal)")):
        g.add_argument(flag, type=typ, metavar="N" if typ is int else "X", help=hlp)
    g.add_argument("--split", action="store_true", help="enable sentence splitting on the server")
    g.add_argument("--seed", type=int, help="seed for reproducible output")
    o = p.add_argument_group("output")
    o.add_argument("--no-play", action="store_true", help="don't play through ffplay")
    o.add_argument("--out", metavar="FILE", help="save audio while streaming (.pcm = raw, else WAV)")
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


def report_http_error(resp: requests.Response) -> None:
    body = resp.text[:4000]
    try:
        body = json.dumps(json.loads(body), indent=2)
    except ValueError:
        pass
    print(f"error: server returned HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
          file=sys.stderr)
    print(body, file=sys.stderr)
    if resp.status_code in (401, 403):
        print(f"hint: check that ${API_KEY_ENV} is valid for this model", file=sys.stderr)


def stream(url: str, payload: dict, headers: dict[str, str], args: argparse.Namespace) -> int:
    sinks: list[FfplaySink | FileSink] = []
    connected = False
    t0 = time.perf_counter()
    first: float | None = None
    pcm_bytes = 0
    try:
        with requests.post(url, json=payload, headers=headers, stream=True,
                           timeout=(10, args.timeout)) as resp:
            connected = True
            if resp.status_code >= 400:
                report_http_error(resp)
                return 1
            rate = int(resp.headers.get("X-Sample-Rate") or DEFAULT_RATE)
            is_wav = (payload.get("format") == "wav"
                      or "wav" in resp.headers.get("Content-Type", "").lower())
            aligner = PcmAligner(is_wav)
            if not args.no_play:
                sinks.append(FfplaySink(rate))
            if args.out:
                sinks.append(FileSink(args.out, rate))
            for chunk in resp.iter_content(chunk_size=None):
                pcm = aligner.feed(chunk)
                if not pcm:
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                pcm_bytes += len(pcm)
                for sink in sinks:
                    sink.write(pcm)
            aligner.finish()
            total = time.perf_counter() - t0
            voice_id = resp.headers.get("X-Voice-Id")
            voice_cache = resp.headers.get("X-Voice-Cache", "?")
        audio_s = pcm_bytes / (2 * rate)
        print((f"voice id:          {voice_id} (cache {voice_cache}; reuse with --voice-id {voice_id})\n"
               if voice_id else "")
              + "first audio chunk: "
              + (f"{first * 1000:.0f} ms\n" if first is not None else "n/a (no audio)\n")
              + f"total time:        {total:.2f} s\n"
              + f"audio seconds:     {audio_s:.2f} s ({pcm_bytes} bytes @ {rate} Hz)\n"
              + "real-time factor:  " + (f"{total / audio_s:.3f}" if audio_s else "n/a")
              + " (total time / audio seconds; < 1 is faster than real time)", file=sys.stderr)
        for sink in sinks:
            sink.close()  # ffplay's close waits for playback to finish
        if args.out:
            print(f"saved {args.out}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except requests.Timeout:
        print(f"error: timed out waiting for {url}", file=sys.stderr)
    except requests.ConnectionError:
        if connected:
            print(f"error: connection to {url} lost mid-stream", file=sys.stderr)
        else:
            print(f"error: could not connect to {url}", file=sys.stderr)
            if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
                print("Is the local server running? Start it with `make serve` "
                      "(or `make demo`).", file=sys.stderr)
    except requests.RequestException as e:
        print(f"error: request to {url} failed: {e}", file=sys.stderr)
    except (OSError, ValueError) as e:  # unwritable --out, ffplay failed to start, bad WAV header
        print(f"error: {e}", file=sys.stderr)
    finally:
        # On any early exit: stop ffplay now and leave a valid (truncated) file.
        for sink in sinks:
            sink.abort()
    return 1


def list_voices(url: str, headers: dict[str, str], timeout: float) -> int:
    try:
        resp = requests.post(url, json={"list": "voices"}, headers=headers, timeout=(10, timeout))
    except requests.RequestException as e:
        print(f"error: request to {url} failed: {e}", file=sys.stderr)
        return 1
    if resp.status_code >= 400:
        report_http_error(resp)
        return 1
    info = resp.json()
    for voice in info["voices"]:
        default = " (default)" if voice["name"] == info["default_speaker"] else ""
        print(f"{voice['name']}  [{voice['source']}]{default}")
    print(f"\nlanguages: {' '.join(info['languages'])}")
    cloning = info["cloning"]
    print(f"cloning: {', '.join(cloning['formats'])} clips of {cloning['seconds'][0]:g}-{cloning['seconds'][1]:g} s; "
          f"{cloning['cached_voices']} cloned voices cached")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    if args.model_id and not api_key:
        print(f"error: --model-id needs an API key; set {API_KEY_ENV} "
              f"(export {API_KEY_ENV}=...)", file=sys.stderr)
        return 2
    url = build_url(args.url, args.model_id, args.environment)
    if args.list_voices:
        return list_voices(url, build_headers(api_key), args.timeout)
    args.text = read_text(args, parser)
    try:
        payload = build_payload(args)
    except OSError as e:
        parser.error(f"cannot read voice clip {e.filename}: {e.strerror}")
    if not args.no_play and shutil.which("ffplay") is None:
        print("error: ffplay not found on PATH (it ships with ffmpeg). Install ffmpeg, "
              "or skip playback and save the audio: --no-play --out speech.wav", file=sys.stderr)
        return 1
    if args.verbose:
        print(f"POST {url}", file=sys.stderr)
        print(f"auth: {'Api-Key <redacted>' if api_key else 'none'}", file=sys.stderr)
        print(f"body: {shown_payload(payload)}", file=sys.stderr)
    return stream(url, payload, build_headers(api_key), args)


if __name__ == "__main__":
    sys.exit(main())
