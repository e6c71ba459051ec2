"""The realtime deployment (config.realtime.yaml) on the real Truss runtime, through a real websocket
client (the `websockets` package), on the tiny checkpoint from its read-only mount.

Every utterance of the test checkpoint is TOKENS GPT tokens (about 1.9 s of audio), whatever its text.
"""

import json
import random
import re
import signal
import threading
import time
import wave

import numpy as np
import pytest
import soxr
from conftest import TOKENS, request_log_line, running_server
from test_encoders import decode, quiet_runs
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

SAMPLES_PER_TOKEN = 1114  # at 24 kHz (scripts/make_checkpoint.py)


@pytest.fixture(autouse=True)
def close_clients():
    """A session outlives its turns: each test's clients leave at its end, so that the next test does not
    meet the replica's max_sessions."""
    yield
    while Client.opened:
        Client.opened.pop().ws.close()


class Client:
    """A session as a voice agent runs it; every frame received is kept with its arrival time."""

    opened: list["Client"] = []

    def __init__(self, url: str):
        self.ws = connect(url, max_size=None, open_timeout=30)
        self.frames: list[tuple[float, dict | bytes]] = []
        Client.opened.append(self)


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
    client.send({"type": "session.close"})  # the session outlives its turn until the client ends it
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
    client.send({"type": "session.close"})
    assert client.until_closed()[0] == 1000


def test_config_during_a_turn_is_an_error_and_text_after_done_is_the_next_turn(realtime):
    client = Client(realtime.ws_url)
    client.words("Hello")
    client.send({"type": "session.config", "format": "mulaw"})
    assert client.until("error") == {
        "type": "error", "field": "type",
        "message": "session.config comes between turns: text is buffered or being spoken; send it after this turn's session.done"}
    client.send({"type": "input.done"})
    client.words("Next turn.")
    client.send({"type": "input.done"})
    assert [client.until("session.done")["segments"] for _ in range(2)] == [1, 1]
    assert [e["text"] for e in client.events("audio.start")] == ["Hello", "Next turn."]
    assert client.events("session.ready")[0]["format"] == "pcm"  # the refused config changed nothing
    assert {e["sample_rate"] for e in client.events("audio.start")} == {24000}


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


def test_mp3_segments_are_one_stream_ffmpeg_decodes_without_silence_at_the_join(realtime):
    """Before: each segment's LAME encoder was flushed on its own; ffmpeg found 152 ms of silence at each
    join at 8 kHz that the PCM stream lacks. The second segment generates while the first streams, so its
    audio is there when the first ends, and LAME's held frames go on with it."""
    text = "The first segment is here. The second follows it."
    mp3 = spoken(realtime.ws_url, text, format="mp3", sample_rate=8000, seed=6)
    pcm = spoken(realtime.ws_url, text, format="pcm", sample_rate=8000, seed=6)
    samples = [e["samples"] for e in mp3.events("audio.done")]
    assert samples == [e["samples"] for e in pcm.events("audio.done")] and len(samples) == 2
    decoded = decode(mp3.audio(), "mp3", 8000)
    reference = decode(pcm.audio(), "pcm", 8000)
    assert not quiet_runs(reference, 8000)  # the noise of random weights is never quiet for 10 ms
    # LAME's start delay (0.14 s here) and its end padding are quiet; nothing between them may be.
    inside = [run for run in quiet_runs(decoded, 8000) if 0.2 < run[0] < sum(samples) / 8000]
    assert inside == [], f"quiet in the MP3 stream; the join is at {samples[0] / 8000:.2f} s of audio"
    assert decoded.size - sum(samples) <= 1105 + 2 * 576  # one stream's delay and padding, not two


# The protocol fuzz: a client sends random and hostile messages at random moments between text, flush,
# cancel and audio. The session answers each bad one with an `error` and goes on, or closes with a
# documented code after an `error` whose message is the close's reason; never 1011.
HOSTILE = [
    ("[" * 25000 + "]" * 25000, None),  # 50 KB of nesting: json.loads raised RecursionError (1011)
    ('{"type": "input.text", "text": "\\ud800 hello."}', "text"),  # the tokenizer raised TypeError (1011)
    ('{"type": "input.text", "text": "\\udfff"}', "text"),
    ('{"type": "input.text", "text": NaN}', "text"),
    ('{"type": "input.text"}', "text"),
    ('{"type": "input.text", "text": "hi", "extra": 1}', "extra"),
    ('{"type": "input.flush", "now": true}', "now"),
    ('{"type": 12}', "type"),
    ('{"type": "input.speak"}', "type"),
    ('{"type": ["input.text"]}', "type"),
    ('"just a string"', None),
    ("[1, 2, 3]", None),
    ("{not json", None),
    ("", None),
    ('{"type": "cancel", "deep": ' + "[" * 40 + "]" * 40 + "}", None),
    (b"\x00\xff binary", None),
    ('{"type": "session.config", "chunk_size": "20"}', "chunk_size"),
    ('{"type": "session.config", "format": "wav"}', "format"),
    ('{"type": "session.config", "speaker_wav": "not base64!"}', "speaker_wav"),
    ('{"type": "session.config", "text": "x"}', "text"),
]
ODD_TEXT = [" 🙂👍🏽", " 你好。", " \u200b\u200d", " ‮right to left‬.", " 1234567890123456789012345.", " $5,000,000.", " ...",
            " \x07\x1b[31m", " Mr.", " e.g.", ",", " —", " ٣٤٥ مرحبا؟", " नमस्ते।"]
WORDS = "the quick brown fox jumps over a lazy dog while it rains in spain".split()
DOCUMENTED = {1000, 1008, 1009, 1013}


class FuzzClient(Client):
    """A Client whose frames are read by a thread, so that sends can come at any moment of the audio."""

    def __init__(self, url: str):
        super().__init__(url)
        self.closed: tuple[int, str] | None = None
        self.arrived = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                self.recv(120)
                self.arrived.set()
        except (ConnectionClosed, TimeoutError):
            pass
        self.closed = (self.ws.close_code, self.ws.close_reason)
        self.arrived.set()

    def send(self, message) -> bool:
        try:
            super().send(message)
            return True
        except ConnectionClosed:
            return False

    def wait_for(self, test, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not test() and self.closed is None and time.monotonic() < deadline:
            self.arrived.clear()
            self.arrived.wait(0.05)


def fuzz_session(url: str, rng: random.Random, actions: int) -> tuple[FuzzClient, int, list[str]]:
    client = FuzzClient(url)
    bad, log = 0, []
    for _ in range(actions):
        roll = rng.random()
        if roll < 0.3:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            message = {"type": "input.text", "text": " " + text + rng.choice(["", "", ".", ",", "!", "?"])}
        elif roll < 0.4:
            message = {"type": "input.text", "text": rng.choice(ODD_TEXT)}
        elif roll < 0.5:
            message = {"type": rng.choice(["input.flush", "cancel", "cancel"])}
        elif roll < 0.55:
            message = {"type": "session.config", "format": rng.choice(["pcm", "mulaw", "mp3", "opus"]),
                       "chunk_size": rng.randint(2, 20), "seed": rng.randrange(100)}
        elif roll < 0.9:
            message, _ = rng.choice(HOSTILE)
            bad += 1
        elif roll < 0.95:
            message = {"type": "input.text", "text": "x" * rng.choice([3000, 5000])}  # may pass max_buffered_text_chars
        else:
            message = "{" + " " * 70000 + "}"  # past max_message_chars (after the first message)
        log.append(message if isinstance(message, (str, bytes)) else json.dumps(message)[:60])
        if not client.send(message):
            break
        moment = rng.random()
        if moment < 0.3:
            heard = len(client.audio())
            client.wait_for(lambda: len(client.audio()) > heard, 3)  # between two audio frames
        elif moment < 0.5:
            time.sleep(rng.uniform(0, 0.3))
    return client, bad, log


def check_fuzzed(client: FuzzClient, bad: int, log: list[str]) -> None:
    frames = [f for _, f in client.frames]
    code, reason = client.closed
    assert code in DOCUMENTED, (code, reason, log)
    errors = [f for f in frames if isinstance(f, dict) and f["type"] == "error"]
    if code != 1000:
        assert errors and errors[-1]["message"] == reason, (code, reason, errors[-1:], log)
        assert not any(isinstance(f, bytes) for f in frames[frames.index(errors[-1]):]), "audio after the closing error"
    else:
        assert frames[-1]["type"] == "session.done" and len(errors) >= bad, (len(errors), bad, log)
    segment, stopped = None, False
    for frame in frames:  # audio only inside its segment, none of a cancelled one after `cancelled`
        if isinstance(frame, bytes):
            assert segment is not None and not stopped, log
        elif frame["type"] == "audio.start":
            assert segment is None or stopped, log
            segment, stopped = frame["segment"], False
        elif frame["type"] == "audio.done":
            assert frame["segment"] == segment, log
            segment = None
        elif frame["type"] == "cancelled":
            stopped = True


def test_protocol_fuzz_each_session_answers_errors_and_goes_on_or_closes_as_documented(realtime):
    rng = random.Random(20)
    results = []

    def one(seed: int) -> None:
        session_rng = random.Random(seed)
        client, bad, log = fuzz_session(realtime.ws_url, session_rng, actions=14)
        if client.closed is None:  # still open: it must go on speaking, then end cleanly
            client.send({"type": "cancel"})
            client.send({"type": "input.text", "text": "Goodbye."})
            client.send({"type": "input.done"})
            client.wait_for(lambda: client.events("session.done"), 60)
            client.send({"type": "session.close"})
            client.wait_for(lambda: False, 60)
        results.append((client, bad, log))

    threads = [threading.Thread(target=one, args=(rng.randrange(2**32),)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 6
    for client, bad, log in results:
        check_fuzzed(client, bad, log)
    assert "Traceback" not in realtime.log.read_text()


def test_sigterm_finishes_the_segments_generating_then_closes_with_1012(weights, tmp_path):
    """Before: uvicorn's shutdown sent 1012 at once, 0.05 s after SIGTERM, with 2 KB of a 89 KB segment
    sent. Now the segments already generating are finished, then 1012 with the reason; HTTP-like drain."""
    with running_server(weights.directory, tmp_path / "server.log", "--config", "config.realtime.yaml") as server:
        url = f"ws://127.0.0.1:{server.port}/v1/websocket"
        client = Client(url)
        client.send({"type": "session.config", "chunk_size": 2, "first_chunk_size": 2})
        client.words("The first sentence is generating now. The second one is cut already. A third")
        client.until("audio.start")
        while not isinstance(client.recv(), bytes):
            pass
        server.process.send_signal(signal.SIGTERM)
        late = Client(url)  # a session opened while the others drain is turned away at once
        assert late.until("error")["message"] == late.until_closed()[1]
        assert late.ws.close_code == 1012
        code, reason = client.until_closed()
        assert (code, reason) == (1012, client.events("error")[-1]["message"]) and "shutting down" in reason
        done = client.events("audio.done")
        assert [e["segment"] for e in done] == [1, 2]  # both were generating; the third was not yet cut
        assert all(abs(e["samples"] - TOKENS * SAMPLES_PER_TOKEN) < SAMPLES_PER_TOKEN for e in done)
        assert len(client.audio()) == 2 * sum(e["samples"] for e in done)
        assert server.process.wait(30) is not None  # then the runtime's own shutdown ran
