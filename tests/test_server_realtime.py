"""The realtime deployment (config.realtime.yaml) on the real Truss runtime, through a real websocket
client (the `websockets` package), on the tiny checkpoint from its read-only mount.

Every utterance of the test checkpoint is TOKENS GPT tokens (about 1.9 s of audio), whatever its text.
"""

import json
import re
import threading
import time
import wave

import numpy as np
import pytest
import soxr
from conftest import TOKENS, request_log_line, running_server
from test_encoders import decode
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

SAMPLES_PER_TOKEN = 1114  # at 24 kHz (scripts/make_checkpoint.py)


@pytest.fixture(scope="module")
def realtime(weights, tmp_path_factory):
    log = tmp_path_factory.mktemp("realtime") / "server.log"
    # A short idle limit, to see a limit's close through the runtime; every other test keeps talking.
    with running_server(weights.directory, log, "--config", "config.realtime.yaml", "--metadata", "idle_timeout_s=5") as server:
        server.ws_url = f"ws://127.0.0.1:{server.port}/v1/websocket"
        yield server


class Client:
    """A session as a voice agent runs it; every frame received is kept with its arrival time."""

    def __init__(self, url: str):
        self.ws = connect(url, max_size=None, open_timeout=30)
        self.frames: list[tuple[float, dict | bytes]] = []

    def send(self, message: dict | str | bytes) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def words(self, text: str, per_second: float = 0) -> None:
        for i, word in enumerate(text.split()):
            self.send({"type": "input.text", "text": word if i == 0 else " " + word})
            if per_second:
                time.sleep(1 / per_second)

    def recv(self, timeout: float = 60) -> dict | bytes:
        message = self.ws.recv(timeout)
        frame = message if isinstance(message, bytes) else json.loads(message)
        self.frames.append((time.perf_counter(), frame))
        return frame

    def until(self, kind: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.1, deadline - time.monotonic()))
            if isinstance(frame, dict) and frame["type"] == kind:
                return frame

    def until_closed(self, timeout: float = 60) -> tuple[int, str]:
        try:
            while True:
                self.recv(timeout)
        except ConnectionClosed:
            pass
        return self.ws.close_code, self.ws.close_reason

    def events(self, kind: str | None = None) -> list[dict]:
        return [f for _, f in self.frames if isinstance(f, dict) and (kind is None or f["type"] == kind)]

    def audio(self) -> bytes:
        return b"".join(f for _, f in self.frames if isinstance(f, bytes))


def test_audio_starts_before_input_done_once_the_first_sentence_is_complete(realtime):
    client = Client(realtime.ws_url)
    client.send({"type": "session.config", "seed": 1})
    client.words("The first sentence is complete. The second one is still")
    start = client.until("audio.start")
    assert start["segment"] == 1 and start["text"] == "The first sentence is complete."
    assert isinstance(client.recv(), bytes)  # audio, and no input.done has been sent
    client.send({"type": "input.text", "text": " arriving."})
    client.send({"type": "input.done"})
    done = client.until("session.done")
    assert client.until_closed() == (1000, "")
    assert [e["text"] for e in client.events("audio.start")] == [
        "The first sentence is complete.", "The second one is still arriving."]
    samples = [e["samples"] for e in client.events("audio.done")]
    assert len(client.audio()) == 2 * sum(samples) and done["segments"] == 2
    assert abs(samples[0] - TOKENS * SAMPLES_PER_TOKEN) < SAMPLES_PER_TOKEN


def test_flush_speaks_half_a_sentence_now(realtime):
    client = Client(realtime.ws_url)
    client.words("Half of a sentence")
    client.send({"type": "input.flush"})
    assert client.until("audio.start")["text"] == "Half of a sentence"
    client.until("audio.done")
    client.until("flush.done")
    client.send({"type": "input.done"})
    assert client.until("session.done")["segments"] == 1


def test_cancel_mid_segment_stops_its_audio_and_the_session_goes_on(realtime):
    client = Client(realtime.ws_url)
    client.send({"type": "session.config", "chunk_size": 2, "first_chunk_size": 2})  # 20 chunks a segment
    client.words("This segment is cut off by the caller. This one never starts. And this half")
    start = client.until("audio.start")
    while not isinstance(client.recv(), bytes):
        pass
    client.send({"type": "cancel"})
    cancelled = client.until("cancelled")
    assert cancelled["segments"] == [1, 2]
    line = request_log_line(realtime, start["request_id"])
    chunks = int(re.search(r", (\d+) chunks,", line).group(1))
    assert "stopped: cancelled by the client" in line and chunks < TOKENS // 2
    # The session goes on, without the dropped half sentence.
    client.send({"type": "input.text", "text": "After the barge-in."})
    client.send({"type": "input.done"})
    done = client.until("session.done")
    frames = [f for _, f in client.frames]
    at = frames.index(cancelled)
    restart = frames.index(client.events("audio.start")[-1])
    assert at < restart and not any(isinstance(f, bytes) for f in frames[at:restart])  # nothing cancelled after it
    assert (frames[restart]["segment"], frames[restart]["text"]) == (3, "After the barge-in.")
    assert done["segments"] == 1


def test_several_sessions_at_once_each_get_all_their_segments_in_order(realtime):
    results: dict[int, Client] = {}

    def session(n: int) -> None:
        client = Client(realtime.ws_url)
        client.send({"type": "session.config", "seed": n})
        client.words(f"Session {n} says one. Session {n} says two.", per_second=20)
        client.send({"type": "input.done"})
        client.until("session.done", timeout=120)
        results[n] = client

    threads = [threading.Thread(target=session, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert sorted(results) == [0, 1, 2]
    for n, client in results.items():
        assert [(e["segment"], e["text"]) for e in client.events("audio.start")] == [
            (1, f"Session {n} says one."), (2, f"Session {n} says two.")]
        assert len(client.audio()) == 2 * sum(e["samples"] for e in client.events("audio.done"))


@pytest.mark.parametrize("message, field, says", [
    ("{not json", None, "not JSON"),
    ({"type": "input.speak", "text": "x"}, "type", "unknown type"),
    ({"type": "session.config", "chunk_size": 0}, "chunk_size", "greater than or equal to 1"),
    ({"type": "session.config", "speaker": "Nobody"}, "speaker", "unknown speaker"),
    (b"\x00binary", None, "binary frames"),
])
def test_a_bad_message_gets_an_error_naming_the_field_and_the_session_stays_usable(realtime, message, field, says):
    client = Client(realtime.ws_url)
    client.send(message)
    error = client.until("error")
    assert error["field"] == field and says in error["message"]
    client.send({"type": "input.text", "text": "Still here."})
    client.send({"type": "input.done"})
    assert client.until("session.done")["segments"] == 1
    assert client.until_closed()[0] == 1000


def test_config_after_text_and_text_after_done_are_errors(realtime):
    client = Client(realtime.ws_url)
    client.words("Hello")
    client.send({"type": "session.config", "format": "mulaw"})
    assert client.until("error") == {
        "type": "error", "field": "type",
        "message": "session.config comes at most once, before the first input.text: text has already arrived"}
    client.send({"type": "input.done"})
    client.words("late")
    error = client.until("error")
    assert error["field"] == "type" and "after input.done" in error["message"]
    client.until("session.done")
    assert [e["text"] for e in client.events("audio.start")] == ["Hello"]
    assert client.events("session.ready")[0]["format"] == "pcm"  # the refused config changed nothing


def test_a_client_that_disconnects_mid_segment_frees_its_engine_slot(realtime):
    gone = Client(realtime.ws_url)
    gone.send({"type": "session.config", "chunk_size": 2, "first_chunk_size": 2})
    gone.words("This caller hangs up during this sentence. And this one waits.")
    start = gone.until("audio.start")
    while not isinstance(gone.recv(), bytes):
        pass
    gone.ws.socket.close()  # no close frame: the caller's network is gone
    line = request_log_line(realtime, start["request_id"])
    assert "stopped: the client disconnected" in line
    assert int(re.search(r", (\d+) chunks,", line).group(1)) < TOKENS // 2
    # The engine is free: the next session's first segment starts generating at once.
    other = Client(realtime.ws_url)
    other.words("Next caller.")
    other.send({"type": "input.done"})
    start = other.until("audio.start")
    other.until("session.done")
    queued = re.search(r"queued (\d+) ms", request_log_line(realtime, start["request_id"])).group(1)
    assert int(queued) < 1000


def spoken(url: str, text: str, **config) -> Client:
    client = Client(url)
    client.send({"type": "session.config", **config})
    client.words(text)
    client.send({"type": "input.done"})
    client.until("session.done")
    return client


def test_mulaw_at_8_khz_end_to_end(realtime):
    text = "Telephone audio for a caller."
    phone = spoken(realtime.ws_url, text, format="mulaw", seed=2)
    assert phone.events("session.ready") == [{"type": "session.ready", "format": "mulaw", "sample_rate": 8000}]
    audio = phone.audio()
    # One byte a sample, the segment's whole length at 8 kHz.
    assert len(audio) == phone.events("audio.done")[0]["samples"]
    assert abs(len(audio) - TOKENS * SAMPLES_PER_TOKEN / 3) < SAMPLES_PER_TOKEN
    assert phone.events("session.done")[0]["audio_seconds"] == pytest.approx(len(audio) / 8000, abs=0.01)
    # The same audio as the same session in 24 kHz PCM, resampled and μ-law coded (decoded by ffmpeg).
    reference = np.frombuffer(spoken(realtime.ws_url, text, seed=2).audio(), "<i2") / 32767.0
    expected = soxr.resample(reference.astype(np.float32), 24000, 8000, quality="HQ") * 32767
    decoded = decode(audio, "mulaw", 8000)
    assert abs(decoded.size - expected.size) <= 2
    n = min(decoded.size, expected.size)
    assert np.corrcoef(decoded[:n], expected[:n])[0, 1] > 0.98


def test_an_idle_session_is_closed_with_an_error_a_code_and_a_reason(realtime):
    client = Client(realtime.ws_url)
    client.send({"type": "session.config"})
    client.until("session.ready")
    started = time.monotonic()
    error = client.until("error", timeout=30)
    code, reason = client.until_closed()
    assert error["message"] == reason == "idle for 5 s: no message and nothing to speak"
    assert code == 1008 and 4.5 < time.monotonic() - started < 15


def test_call_py_realtime_streams_word_by_word_and_saves_what_it_heard(realtime, tmp_path, capsys):
    import call

    out = tmp_path / "heard.wav"
    code = call.main(["--realtime", "--url", realtime.ws_url, "--no-play", "--out", str(out), "--seed", "3",
                      "--words-per-second", "20", "First sentence here. And the second one."])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "segment 1: First sentence here." in err and "segment 2: And the second one." in err
    assert re.search(r"first audio: +\d+ ms after the first segment's last word was sent", err)
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and abs(wav.getnframes() - 2 * TOKENS * SAMPLES_PER_TOKEN) < 2 * SAMPLES_PER_TOKEN
