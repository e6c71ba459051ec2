"""Tests for call.py against a local stand-in for the streaming TTS server (no model needed)."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import call  # noqa: E402

SECRET = "sk-test-SECRET-4f9a1c"
# 0.25 s of a deterministic, non-silent 16-bit pattern at 24 kHz.
PCM = b"".join(struct.pack("<h", (i * 997) % 65536 - 32768) for i in range(6000))
# Odd sizes so that both the 44-byte WAV header and 16-bit samples straddle chunk boundaries.
CHUNK_SIZES = [7, 30, 1, 1001, 3, 2500, 999]
# Stand-ins for encoded streams: call.py must pass them on byte for byte, never decode them.
ENCODED = {"opus": b"OggS" + bytes(range(256)) * 20, "mp3": b"\xff\xf3" + bytes(range(255, -1, -1)) * 20,
           "mulaw": bytes(range(128, 256)) * 40, "alaw": bytes(range(128)) * 40}
MEDIA_TYPES = {"opus": "audio/ogg;codecs=opus", "mp3": "audio/mpeg", "mulaw": "audio/PCMU;rate=8000",
               "alaw": "audio/PCMA;rate=8000"}


def wav_header(rate: int) -> bytes:
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 0xFFFFFFFF, b"WAVE", b"fmt ", 16, 1, 1,
                       rate, rate * 2, 2, 16, b"data", 0xFFFFFFFF)


def split(data: bytes) -> list[bytes]:
    pieces, pos = [], 0
    for size in CHUNK_SIZES:
        pieces.append(data[pos:pos + size])
        pos += size
    pieces.append(data[pos:])
    return [p for p in pieces if p]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # needed for chunked transfer encoding

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.server.received.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        if body.get("text") in ("bad", "busy", "voices") or body.get("list") == "voices":
            status, err, extra = {
                "bad": (400, {"error": "Input Parsing Error:\n  `text`: text 'bad' is not allowed"}, {}),
                "busy": (503, {"error": "the queue is full"}, {"Retry-After": "7"}),
            }.get(body.get("text"), (200, {"voices": "not a list"}, {}))
            err = json.dumps(err).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(err)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(err)
            return
        fmt = body.get("format", "pcm")
        default = 16000 if body.get("text") == "rate16k" else 8000 if fmt in ("mulaw", "alaw") else 24000
        rate = body.get("sample_rate") or default
        is_wav = fmt == "wav"
        data = ENCODED[fmt] if fmt in ENCODED else (wav_header(rate) if is_wav else b"") + PCM
        if body.get("text") == "odd":
            data = data[:-1]  # cut inside the last sample, then a clean end
        self.send_response(200)
        self.send_header("Content-Type", MEDIA_TYPES.get(fmt, "audio/wav" if is_wav else "application/octet-stream"))
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Sample-Rate", str(rate))
        self.send_header("X-Voice-Id", "voice-abc123")
        self.end_headers()
        try:
            for i, piece in enumerate(split(data)):
                if body.get("text") == "cut" and i == 4:
                    # What uvicorn does when the model fails mid-stream: close without the final chunk.
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.002)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up (the Ctrl-C test)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.received = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/model:predict"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("BASETEN_API_KEY", raising=False)


@pytest.fixture
def fake_ffplay(tmp_path, monkeypatch):
    """An `ffplay` on an otherwise empty PATH that records its argv and everything on stdin."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "ffplay"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{bindir}/args"\n'
                      f'exec /bin/cat > "{bindir}/stdin"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def read_wav(path: Path) -> tuple[wave._wave_params, bytes]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), w.readframes(w.getnframes())


# ---- pure functions -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, expected", [
    ({"url": "http://example.test/predict"}, "http://example.test/predict"),
    ({"model_id": "abc123"},
     "https://model-abc123.api.baseten.co/environments/production/predict"),
    ({"model_id": "abc123", "environment": "staging"},
     "https://model-abc123.api.baseten.co/environments/staging/predict"),
    ({"model_id": "abc123", "environment": "development"},
     "https://model-abc123.api.baseten.co/development/predict"),
])
def test_build_url(kwargs, expected):
    assert call.build_url(**kwargs) == expected


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "ws://127.0.0.1:8080/v1/websocket"),
    ({"model_id": "abc123"}, "wss://model-abc123.api.baseten.co/environments/production/websocket"),
    ({"model_id": "abc123", "environment": "development"}, "wss://model-abc123.api.baseten.co/development/websocket"),
])
def test_build_url_realtime(kwargs, expected, monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    assert call.build_url(**kwargs, realtime=True) == expected


def test_realtime_words_and_when_the_first_segment_was_sent():
    assert call.words("Hello  there.\nNext") == ["Hello", " there.", " Next"]
    sends = [(1.0, "Hello"), (2.0, "Hello there."), (3.0, "Hello there. Next")]
    assert call.sent_by("Hello there.", sends) == 2.0
    assert call.sent_by("Something else.", sends) is None


def test_realtime_refuses_an_http_url_and_http_only_flags(capsys):
    assert call.main(["--realtime", "--url", "http://127.0.0.1:1/v1/models/model:predict", "hi"]) == 2
    assert call.main(["--realtime", "--split", "--no-play", "hi"]) == 2
    assert "websocket address" in capsys.readouterr().err


def test_build_url_local_default_uses_port(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    assert call.build_url() == "http://127.0.0.1:8080/v1/models/model:predict"
    monkeypatch.setenv("PORT", "9123")
    assert call.build_url() == "http://127.0.0.1:9123/v1/models/model:predict"


def test_build_payload_only_set_fields():
    args = call.build_parser().parse_args(["hello"])
    assert call.build_payload(args) == {"text": "hello"}


def test_build_payload_all_fields():
    args = call.build_parser().parse_args([
        "hi", "--language", "de", "--speaker", "Ana Florence", "--chunk-size", "40",
        "--format", "wav", "--temperature", "0.7", "--top-p", "0.8", "--top-k", "50",
        "--repetition-penalty", "5.5", "--length-penalty", "1.5", "--speed", "1.2",
        "--split", "--seed", "42"])
    payload = call.build_payload(args)
    assert payload == {"text": "hi", "language": "de", "speaker": "Ana Florence",
                       "chunk_size": 40, "format": "wav", "temperature": 0.7, "top_p": 0.8,
                       "top_k": 50, "repetition_penalty": 5.5, "length_penalty": 1.5,
                       "speed": 1.2, "enable_text_splitting": True, "seed": 42}
    assert isinstance(payload["chunk_size"], int) and isinstance(payload["speed"], float)


def test_build_payload_voice_clips_are_base64_one_or_a_list(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    a.write_bytes(b"RIFF-one"), b.write_bytes(b"fLaC-two")
    one = call.build_payload(call.build_parser().parse_args(["hi", "--voice", str(a)]))
    two = call.build_payload(call.build_parser().parse_args(["hi", "--voice", str(a), "--voice", str(b)]))
    assert one == {"text": "hi", "speaker_wav": "UklGRi1vbmU="}
    assert two["speaker_wav"] == ["UklGRi1vbmU=", "ZkxhQy10d28="]
    assert json.loads(call.shown_payload(two))["speaker_wav"] == ["<12 bytes of base64>"] * 2


def test_build_payload_voice_id_streamer_and_first_chunk():
    args = call.build_parser().parse_args(
        ["hi", "--voice-id", "ab" * 16, "--streamer", "upstream", "--first-chunk-size", "6"])
    assert call.build_payload(args) == {"text": "hi", "voice_id": "ab" * 16, "streamer": "upstream",
                                        "first_chunk_size": 6}


@pytest.mark.parametrize("flags", [["--speaker", "A", "--voice", "x.wav"], ["--voice", "x.wav", "--voice-id", "ab"]])
def test_one_voice_option_at_a_time(flags, capsys):
    with pytest.raises(SystemExit) as info:
        call.build_parser().parse_args(["hi", *flags])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_an_unreadable_voice_clip_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        call.main(["hi", "--no-play", "--voice", str(tmp_path / "missing.wav")])
    assert info.value.code == 2 and "cannot read voice clip" in capsys.readouterr().err


def test_build_headers():
    assert "Authorization" not in call.build_headers(None)
    assert call.build_headers("k")["Authorization"] == "Api-Key k"


def test_aligner_handles_split_header_and_odd_bytes():
    aligner = call.PcmAligner(expect_wav_header=True)
    out = b""
    for piece in split(wav_header(24000) + PCM):
        got = aligner.feed(piece)
        assert len(got) % 2 == 0
        out += got
    aligner.finish()
    assert out == PCM
    with pytest.raises(ValueError, match="RIFF"):
        call.PcmAligner(expect_wav_header=True).feed(b"\0" * 60)


# ---- end to end against the stand-in server ------------------------------------------------

@pytest.mark.parametrize("fmt_args", [[], ["--format", "pcm"], ["--format", "wav"]])
def test_out_wav_matches_sent_pcm(server, tmp_path, fmt_args):
    out = tmp_path / "x.wav"
    rc = call.main(["hello", "--url", server.url, "--no-play", "--out", str(out), *fmt_args])
    assert rc == 0
    params, frames = read_wav(out)
    assert (params.framerate, params.nchannels, params.sampwidth) == (24000, 1, 2)
    assert params.nframes == len(PCM) // 2
    assert frames == PCM
    assert server.received[0]["body"].get("format") == (fmt_args[1] if fmt_args else None)


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_out_pcm_is_raw(server, tmp_path, fmt):
    out = tmp_path / "x.pcm"
    assert call.main(["hello", "--url", server.url, "--no-play", "--out", str(out),
                      "--format", fmt]) == 0
    assert out.read_bytes() == PCM


def test_sample_rate_header_is_used(server, tmp_path, capsys):
    out = tmp_path / "r.wav"
    assert call.main(["rate16k", "--url", server.url, "--no-play", "--out", str(out)]) == 0
    params, frames = read_wav(out)
    assert params.framerate == 16000 and frames == PCM
    assert f"{len(PCM) / 2 / 16000:.2f} s" in capsys.readouterr().err


def test_stats_on_stderr(server, capsys):
    assert call.main(["hello", "--url", server.url, "--no-play"]) == 0
    err = capsys.readouterr().err
    ttfa = float(re.search(r"first audio chunk:\s+(\d+) ms", err).group(1))
    total = float(re.search(r"total time:\s+([\d.]+) s", err).group(1))
    audio = float(re.search(r"audio seconds:\s+([\d.]+) s", err).group(1))
    rtf = float(re.search(r"real-time factor:\s+([\d.]+)", err).group(1))
    assert audio == pytest.approx(len(PCM) / 2 / 24000)
    assert 0 <= ttfa <= total * 1000 + 1
    assert rtf == pytest.approx(total / audio, abs=0.05)
    assert "voice-abc123" in err


def test_api_key_sent_and_never_printed(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BASETEN_API_KEY", SECRET)
    rc = call.main(["hello", "--url", server.url, "--no-play", "--verbose",
                    "--out", str(tmp_path / "a.wav")])
    assert rc == 0
    assert server.received[0]["headers"]["Authorization"] == f"Api-Key {SECRET}"
    captured = capsys.readouterr()
    assert "redacted" in captured.err  # verbose ran and mentioned auth...
    assert SECRET not in captured.out + captured.err  # ...without the key


def test_api_key_not_printed_by_subprocess_on_http_error(server):
    env = {**os.environ, "BASETEN_API_KEY": SECRET}
    proc = subprocess.run([sys.executable, str(ROOT / "call.py"), "bad", "--url", server.url,
                           "--no-play", "--verbose"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "text 'bad' is not allowed" in proc.stderr
    assert server.received[0]["headers"]["Authorization"] == f"Api-Key {SECRET}"
    assert SECRET not in proc.stdout + proc.stderr


def test_http_error_is_one_line_with_the_servers_message_and_exits_1(server, tmp_path, capsys):
    out = tmp_path / "never.wav"
    rc = call.main(["bad", "--url", server.url, "--no-play", "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert err == ("error: server returned HTTP 400 Bad Request: Input Parsing Error: `text`: "
                   "text 'bad' is not allowed\n")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_a_busy_server_says_when_to_retry(server, capsys):
    assert call.main(["busy", "--url", server.url, "--no-play"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 503" in err and "the queue is full" in err and "retry after 7 s" in err


def test_missing_ffplay_fails_before_request(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # empty dir: no ffplay anywhere
    rc = call.main(["hello", "--url", server.url])
    assert rc != 0
    err = capsys.readouterr().err
    assert "ffplay" in err and "--out" in err and "--no-play" in err
    assert server.received == []


def test_playback_pipes_pcm_to_ffplay(server, fake_ffplay, tmp_path):
    out = tmp_path / "both.wav"
    assert call.main(["hello", "--url", server.url, "--format", "wav", "--out", str(out)]) == 0
    argv = (fake_ffplay / "args").read_text().split("\n")
    assert " ".join(argv).startswith("-nodisp -autoexit")
    joined = " ".join(argv)
    assert "-f s16le -ar 24000 -ac 1 -i -" in joined and "-probesize 32" in joined
    assert (fake_ffplay / "stdin").read_bytes() == PCM  # WAV header stripped, same PCM
    assert read_wav(out)[1] == PCM  # --out works alongside playback


def test_ctrl_c_terminates_ffplay_and_returns_130(server, fake_ffplay, tmp_path, monkeypatch):
    # A player that never reads stdin or exits by itself, so only termination can end it.
    (fake_ffplay / "ffplay").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    players = []

    class RecordingFfplay(call.FfplaySink):
        def __init__(self, rate: int, fmt: str) -> None:
            super().__init__(rate, fmt)
            players.append(self)

    def interrupt(self, pcm):
        raise KeyboardInterrupt

    monkeypatch.setattr(call, "FfplaySink", RecordingFfplay)
    monkeypatch.setattr(call.FileSink, "write", interrupt)
    out = tmp_path / "partial.wav"
    start = time.monotonic()
    rc = call.main(["hello", "--url", server.url, "--out", str(out)])
    assert rc == 130
    assert time.monotonic() - start < 5
    assert len(players) == 1
    assert players[0]._proc.returncode == -signal.SIGTERM  # terminated and reaped
    assert list(tmp_path.iterdir()) == [fake_ffplay]  # no partial file under any name


def test_text_from_file(server, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Hello from a file.\n", encoding="utf-8")
    assert call.main(["--file", str(f), "--url", server.url, "--no-play"]) == 0
    assert server.received[0]["body"] == {"text": "Hello from a file."}


def test_text_from_stdin(server, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Piped text.\n"))
    assert call.main(["--url", server.url, "--no-play", "--seed", "7"]) == 0
    assert server.received[0]["body"] == {"text": "Piped text.", "seed": 7}


def test_no_text_on_a_tty_is_a_usage_error(monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    with pytest.raises(SystemExit) as exc:
        call.main(["--no-play"])
    assert exc.value.code == 2
    assert "--file" in capsys.readouterr().err


def test_url_and_model_id_conflict(capsys):
    with pytest.raises(SystemExit) as exc:
        call.main(["hi", "--url", "http://x", "--model-id", "abc"])
    assert exc.value.code == 2
    assert "--model-id" in capsys.readouterr().err


def test_model_id_without_key(capsys):
    assert call.main(["hi", "--model-id", "abc", "--no-play"]) == 2
    assert "BASETEN_API_KEY" in capsys.readouterr().err


def test_help_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "call.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model-id", "--environment", "--no-play", "--out", "--split", "--top-k"):
        assert flag in proc.stdout


# ---- formats and rates ---------------------------------------------------------------------

@pytest.mark.parametrize("name,fmt", [("a.mp3", "mp3"), ("a.ogg", "opus"), ("a.opus", "opus"), ("a.ulaw", "mulaw"),
                                      ("a.alaw", "alaw")])
def test_out_extension_picks_the_format_and_the_bytes_are_saved_as_sent(server, tmp_path, name, fmt):
    out = tmp_path / name
    assert call.main(["hello", "--url", server.url, "--no-play", "--out", str(out)]) == 0
    assert server.received[0]["body"] == {"text": "hello", "format": fmt}
    assert out.read_bytes() == ENCODED[fmt]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_sample_rate_is_sent_and_a_wav_is_written_at_it(server, tmp_path):
    out = tmp_path / "r.wav"
    assert call.main(["hi", "--url", server.url, "--no-play", "--sample-rate", "44100", "--out", str(out)]) == 0
    assert server.received[0]["body"] == {"text": "hi", "sample_rate": 44100}
    params, frames = read_wav(out)
    assert params.framerate == 44100 and frames == PCM


@pytest.mark.parametrize("fmt,rate,input_options", [
    ("pcm", 16000, "-f s16le -ar 16000 -ac 1 -i -"),
    ("wav", 48000, "-f s16le -ar 48000 -ac 1 -i -"),
    ("mulaw", 8000, "-f mulaw -ar 8000 -ac 1 -i -"),
    ("alaw", 8000, "-f alaw -ar 8000 -ac 1 -i -"),
    ("opus", 48000, "-f ogg -i -"),
    ("mp3", 22050, "-f mp3 -i -"),
])
def test_each_format_plays_through_ffplay_with_its_input_options(server, fake_ffplay, fmt, rate, input_options):
    assert call.main(["hello", "--url", server.url, "--format", fmt, "--sample-rate", str(rate)]) == 0
    argv = (fake_ffplay / "args").read_text().split("\n")
    assert " ".join(argv).endswith(input_options + " ")
    assert (fake_ffplay / "stdin").read_bytes() == ENCODED.get(fmt, PCM)


@pytest.mark.parametrize("flags,says", [
    (["--format", "opus", "--out", "x.mp3"], "--out x.mp3 names mp3 but --format is opus"),
    (["--format", "mp3", "--out", "x.wav"], "name it with .mp3"),
    (["--format", "mulaw", "--out", "x.pcm"], "name it with .ulaw"),
])
def test_out_that_cannot_hold_the_format_is_refused_before_sending(server, tmp_path, monkeypatch, capsys, flags, says):
    monkeypatch.chdir(tmp_path)
    assert call.main(["hi", "--url", server.url, "--no-play", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert server.received == [] and list(tmp_path.iterdir()) == []


# ---- every error path: one line, said before anything is sent where it can be ----------------

def test_out_into_a_missing_directory_fails_before_sending(server, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir" / "x.wav"
    assert call.main(["hi", "--url", server.url, "--no-play", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "directory exists" in err
    assert server.received == []


def test_out_naming_a_directory_fails_before_sending(server, tmp_path, capsys):
    assert call.main(["hi", "--url", server.url, "--no-play", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err and server.received == []


@pytest.mark.parametrize("argv, url, starts", [
    (["--list-voices"], "http://127.0.0.1:{port}/v1/models/model:predict", "`make serve` (or `make demo`)"),
    (["hello", "--no-play"], "http://127.0.0.1:{port}/v1/models/model:predict", "`make serve` (or `make demo`)"),
    (["hello", "--no-play", "--realtime"], "ws://127.0.0.1:{port}/v1/websocket", "`make serve-realtime` (or `make demo-realtime`)"),
])
def test_a_server_that_is_down_gets_the_same_one_line_hint(argv, url, starts, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = url.format(port=port)
    assert call.main([*argv, "--url", url]) == 1
    err = capsys.readouterr().err
    assert err == f"error: could not connect to {url}; is the local server running? Start it with {starts}\n"


def test_an_empty_out_is_refused_before_sending(server, capsys):
    assert call.main(["hi", "--url", server.url, "--no-play", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err == "error: --out needs a file name, e.g. --out speech.wav\n" and server.received == []


@pytest.mark.parametrize("argv, says", [
    (["--chunk-size", "x", "hi"], "argument --chunk-size: invalid int value: 'x'"),
    (["hi", "--format", "flac"], "argument --format: invalid choice: 'flac'"),
    (["hi", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_usage_error_is_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        call.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {says}") and "usage:" not in err


@pytest.mark.parametrize("url", ["127.0.0.1:8080/v1/models/model:predict", "localhost", "ftp://example.test/x"])
def test_a_url_without_a_scheme_is_refused_in_one_line(url, capsys):
    assert call.main(["hi", "--url", url, "--no-play"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http://127.0.0.1:8080/v1/models/model:predict" in err
    assert "connection adapters" not in err


def test_list_voices_from_something_else_is_one_line(server, capsys):
    assert call.main(["--list-voices", "--url", server.url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not with a voice list" in err


@pytest.mark.parametrize("text,fmt,name", [("cut", None, "x.wav"), ("cut", "mp3", "x.mp3"), ("cut", None, "x.pcm"),
                                           ("odd", None, "x.wav")])
def test_a_stream_cut_off_says_so_exits_1_and_leaves_no_file(server, tmp_path, capsys, text, fmt, name):
    out = tmp_path / name
    rc = call.main([text, "--url", server.url, "--no-play", "--out", str(out), *(["--format", fmt] if fmt else [])])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "audio cut off" in err and f"nothing saved to {out}" in err
    assert list(tmp_path.iterdir()) == []


def test_a_stream_cut_off_while_playing_stops_ffplay_and_exits_1(server, fake_ffplay, monkeypatch, capsys):
    players = []

    class RecordingFfplay(call.FfplaySink):
        def __init__(self, rate: int, fmt: str) -> None:
            super().__init__(rate, fmt)
            players.append(self)

    monkeypatch.setattr(call, "FfplaySink", RecordingFfplay)
    assert call.main(["cut", "--url", server.url]) == 1
    assert "audio cut off" in capsys.readouterr().err
    assert len(players) == 1 and players[0]._proc.returncode is not None  # stopped and reaped


def test_a_complete_stream_is_renamed_into_place_only_at_the_end(server, tmp_path, monkeypatch):
    out = tmp_path / "done.wav"
    seen = []
    write = call.FileSink.write

    def spy(self, data):
        seen.append((out.exists(), Path(self.part).exists()))
        write(self, data)

    monkeypatch.setattr(call.FileSink, "write", spy)
    assert call.main(["hello", "--url", server.url, "--no-play", "--out", str(out)]) == 0
    assert seen and set(seen) == {(False, True)}  # streamed into NAME.part, never under NAME
    assert read_wav(out)[1] == PCM and sorted(p.name for p in tmp_path.iterdir()) == ["done.wav"]
