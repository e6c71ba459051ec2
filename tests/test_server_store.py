"""The voice store across replicas, on the real Truss runtime: two HTTP servers (replicas A and B) and
a realtime one share a temporary store folder, as replicas and deployments share b10cache.

Every test clones clips of its own, so that no voice is in a replica's memory by accident.
"""

import base64
import concurrent.futures
import contextlib
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import safetensors.torch
import torch
from conftest import PYTHON, ROOT, TOKENS, running_server, tone_wav
from local_server import MountError, read_only_mount
from test_server_realtime import Client

TINY = {"gpt_cond_latent": (1, 32, 64), "speaker_embedding": (1, 512, 1)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def clip(f0: float) -> str:
    """A clip of a voice no other test uses."""
    return b64(tone_wav(2.0, f0=f0))


class Replicas:
    """Servers started together (each start costs most of what these tests take), stopped by PID at the end."""

    def __init__(self, weights, store: Path, logs: Path):
        self.weights, self.store, self.logs = weights, store, logs
        self.servers: dict[str, object] = {}
        self._contexts: dict[str, contextlib.AbstractContextManager] = {}

    def start(self, **wanted: tuple[str, ...]) -> None:
        def one(name: str, args: tuple[str, ...]):
            context = running_server(self.weights.directory, self.logs / f"{name}.log", *args)
            return name, context, context.__enter__()

        with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
            started = [pool.submit(one, name, args) for name, args in wanted.items()]
        failed = [future.exception() for future in started if future.exception() is not None]
        for future in started:
            if future.exception() is None:
                name, context, server = future.result()
                self._contexts[name], self.servers[name] = context, server
        if failed:
            raise failed[0]

    def stop(self, name: str) -> None:
        self._contexts.pop(name).__exit__(None, None, None)
        del self.servers[name]

    def stop_all(self) -> None:
        for name in list(self._contexts):
            self.stop(name)


@pytest.fixture(scope="module")
def replicas(weights, tmp_path_factory):
    store = tmp_path_factory.mktemp("shared-store")
    group = Replicas(weights, store, tmp_path_factory.mktemp("replicas"))
    shared = ("--metadata", f"voice_store={store}")
    try:
        group.start(a=shared, b=shared, realtime=(*shared, "--config", "config.realtime.yaml"))
        group.servers["realtime"].ws_url = f"ws://127.0.0.1:{group.servers['realtime'].port}/v1/websocket"
        yield group
    finally:
        group.stop_all()


def post(server, body: dict) -> requests.Response:
    return requests.post(server.predict_url, json=body, timeout=120)


def stored_file(store: Path, voice_id: str, timeout: float = 10) -> Path:
    """The store's file for this id, once the replica's background write has landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(store.glob(f"*/voices/{voice_id}.safetensors"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no store file for {voice_id} under {store}")


def log_count(server, text: str) -> int:
    return server.log.read_text().count(text)


def test_a_voice_cloned_on_one_replica_is_used_by_id_on_the_other(replicas):
    a, b = replicas.servers["a"], replicas.servers["b"]
    cloned = post(a, {"text": "Shared voice.", "speaker_wav": clip(101.0), "seed": 1})
    assert cloned.status_code == 200 and cloned.headers["x-voice-cache"] == "miss"
    voice_id = cloned.headers["x-voice-id"]
    path = stored_file(replicas.store, voice_id)
    assert {k: tuple(v.shape) for k, v in safetensors.torch.load_file(path).items()} == TINY

    on_b = post(b, {"text": "Shared voice.", "voice_id": voice_id, "seed": 1})
    assert (on_b.status_code, on_b.headers["x-voice-id"], on_b.headers["x-voice-cache"]) == (200, voice_id, "store")
    assert on_b.content == cloned.content  # fp32 latents: the same voice exactly, so the same audio
    again = post(b, {"text": "Shared voice.", "voice_id": voice_id, "seed": 1})
    assert again.headers["x-voice-cache"] == "hit"  # in B's memory now
    assert log_count(b, f"voice {voice_id}: latents computed") == 0


def test_a_name_registered_on_one_replica_is_a_speaker_on_the_other_until_replaced(replicas):
    a, b = replicas.servers["a"], replicas.servers["b"]
    registered = post(a, {"text": "Named.", "speaker_wav": clip(103.0), "voice_name": "Shared narrator", "seed": 2})
    assert registered.status_code == 200
    assert (registered.headers["x-voice-name"], registered.headers["x-voice-store"]) == ("Shared narrator", "shared")

    by_name = post(b, {"text": "Named.", "speaker": "Shared narrator", "seed": 2})
    assert by_name.status_code == 200 and "x-voice-id" not in by_name.headers
    assert by_name.content == registered.content
    listing = post(b, {"list": "voices"}).json()
    assert {"name": "Shared narrator", "source": "registered"} in listing["voices"]
    assert registered.headers["x-voice-id"] not in str(listing) and listing["cloning"]["shared_store"] is True

    replaced = post(b, {"text": "Named.", "speaker_wav": clip(107.0), "voice_name": "Shared narrator", "seed": 2})
    assert replaced.status_code == 200 and replaced.headers["x-voice-id"] != registered.headers["x-voice-id"]
    assert post(a, {"text": "Named.", "speaker": "Shared narrator", "seed": 2}).content == replaced.content

    shadow = post(b, {"text": "Never spoken.", "speaker_wav": clip(109.0), "voice_name": "ana florence"})
    assert shadow.status_code == 400
    assert shadow.json()["error"] == "`voice_name`: 'ana florence' is taken by the studio voice 'Ana Florence': choose another name"
    unknown = post(a, {"text": "Never spoken.", "speaker": "Nobody registered"})
    assert unknown.status_code == 400 and unknown.json()["error"].startswith("`speaker`: unknown speaker 'Nobody registered'")


def test_call_py_registers_a_name_that_the_other_replica_speaks_with(replicas, tmp_path):
    a, b = replicas.servers["a"], replicas.servers["b"]
    (tmp_path / "me.wav").write_bytes(tone_wav(2.0, f0=113.0))

    def call(server, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "call.py", "--url", server.predict_url, "--no-play", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=180)

    registered = call(a, "Mine.", "--voice", str(tmp_path / "me.wav"), "--voice-name", "Call me",
                      "--out", str(tmp_path / "a.wav"))
    assert registered.returncode == 0, registered.stderr
    assert "voice name:        Call me (shared store; use with --speaker 'Call me')" in registered.stderr
    spoken = call(b, "Mine.", "--speaker", "Call me", "--out", str(tmp_path / "b.wav"))
    assert spoken.returncode == 0, spoken.stderr
    assert "Call me  [registered]" in call(b, "--list-voices").stdout


def test_the_same_clip_cloned_on_both_replicas_at_once_is_one_good_voice(replicas):
    a, b = replicas.servers["a"], replicas.servers["b"]
    body = {"text": "At once.", "speaker_wav": clip(127.0), "seed": 4}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda server: post(server, body), (a, b)))
    assert [r.status_code for r in answers] == [200, 200]
    (voice_id,) = {r.headers["x-voice-id"] for r in answers}
    assert {r.headers["x-voice-cache"] for r in answers} <= {"miss", "store"}
    assert answers[0].content == answers[1].content
    path = stored_file(replicas.store, voice_id)
    time.sleep(0.5)  # both replicas' writes have landed
    assert sorted(p.name for p in path.parent.iterdir() if voice_id in p.name) == [path.name]  # no temporary left
    assert {k: tuple(v.shape) for k, v in safetensors.torch.load_file(path).items()} == TINY


@pytest.mark.parametrize("damage", ["corrupt", "wrong shape"])
def test_a_bad_store_file_is_a_404_then_replaced_by_the_clip(replicas, damage):
    a, b = replicas.servers["a"], replicas.servers["b"]
    f0 = {"corrupt": 131.0, "wrong shape": 137.0}[damage]
    voice_id = post(a, {"text": "Damaged.", "speaker_wav": clip(f0)}).headers["x-voice-id"]
    path = stored_file(replicas.store, voice_id)
    if damage == "corrupt":
        data = path.read_bytes()
        path.write_bytes(data[:8] + b"{not json" + data[17:])  # the header garbled
    else:  # a real-size voice, as a checkpoint of another width would have written
        tensors = {"gpt_cond_latent": torch.zeros(1, 32, 1024), "speaker_embedding": torch.zeros(1, 512, 1)}
        safetensors.torch.save_file(tensors, path, metadata={"format": "1", "voice_id": voice_id})

    for _ in range(2):
        missing = post(b, {"text": "Damaged.", "voice_id": voice_id})
        assert missing.status_code == 404 and "send the clip again" in missing.json()["error"]
    assert log_count(b, f"{voice_id}.safetensors is unusable") == 1  # logged once
    resent = post(b, {"text": "Damaged.", "speaker_wav": clip(f0)})
    assert (resent.status_code, resent.headers["x-voice-cache"]) == (200, "miss")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the replacement lands in the background
        with contextlib.suppress(Exception):
            if {k: tuple(v.shape) for k, v in safetensors.torch.load_file(path).items()} == TINY:
                break
        time.sleep(0.05)
    else:
        raise AssertionError(f"{path} was not replaced")
    assert post(a, {"text": "Damaged.", "voice_id": voice_id}).status_code == 200  # A still had it in memory


def test_an_http_voice_in_a_realtime_session_by_id_and_by_name_and_one_registered_there(replicas):
    a, realtime = replicas.servers["a"], replicas.servers["realtime"]
    cloned = post(a, {"text": "Over the socket.", "speaker_wav": clip(139.0), "voice_name": "Socket voice", "seed": 5})
    voice_id = cloned.headers["x-voice-id"]
    stored_file(replicas.store, voice_id)

    for config in ({"voice_id": voice_id}, {"speaker": "Socket voice"}):
        session = Client(realtime.ws_url)
        session.send({"type": "session.config", "seed": 5, **config})
        ready = session.until("session.ready")
        assert ready.get("voice_id") == config.get("voice_id")
        session.words("Over the socket.")
        session.send({"type": "input.done"})
        session.until("session.done")
        assert session.events("error") == [] and session.audio() == cloned.content

    # A voice registered in a session is a speaker over HTTP.
    session = Client(realtime.ws_url)
    session.send({"type": "session.config", "speaker_wav": clip(149.0), "voice_name": "Said on the socket"})
    assert len(session.until("session.ready")["voice_id"]) == 32
    session.ws.close()
    spoken = post(a, {"text": "Heard over HTTP.", "speaker": "Said on the socket"})
    assert spoken.status_code == 200 and len(spoken.content) >= TOKENS * 1024 * 2 * 0.9


# Last: it restarts replica A.
@pytest.fixture(scope="module")
def restarted(replicas, tmp_path_factory):
    """Replica A restarted after cloning a voice and registering a name, on a read-only view of the
    store where a bind mount can be made (else on the store itself)."""
    a = replicas.servers["a"]
    cloned = post(a, {"text": "Before the restart.", "speaker_wav": clip(151.0), "voice_name": "Restart voice", "seed": 6})
    voice_id = cloned.headers["x-voice-id"]
    stored_file(replicas.store, voice_id)
    replicas.stop("a")
    with contextlib.ExitStack() as stack:
        try:
            view = stack.enter_context(read_only_mount(replicas.store, tmp_path_factory.mktemp("ro") / "store"))
            why = ""
        except MountError as exc:
            view, why = replicas.store, str(exc)
        replicas.start(a=("--metadata", f"voice_store={view}"))
        yield replicas.servers["a"], cloned, why
        replicas.stop("a")


def test_a_restarted_replica_speaks_a_voice_by_id_and_by_name_with_no_clip(restarted):
    a, before, _ = restarted
    voice_id = before.headers["x-voice-id"]
    by_id = post(a, {"text": "Before the restart.", "voice_id": voice_id, "seed": 6})
    assert (by_id.status_code, by_id.headers["x-voice-cache"]) == (200, "store")
    assert by_id.content == before.content
    by_name = post(a, {"text": "Before the restart.", "speaker": "Restart voice", "seed": 6})
    assert by_name.status_code == 200 and by_name.content == before.content
    assert log_count(a, "latents computed") == 0


def test_a_read_only_store_is_read_and_voices_cloned_there_stay_in_memory(restarted, replicas):
    a, _, why = restarted
    if why:
        pytest.skip(f"a read-only store needs a read-only bind mount: {why}")
    assert re.search(r"voice store .*: \d+ files, at most 1000; read-only", a.log.read_text())
    cloned = post(a, {"text": "Read-only.", "speaker_wav": clip(157.0), "voice_name": "Kept here"})
    assert cloned.status_code == 200 and cloned.headers["x-voice-store"] == "replica"
    voice_id = cloned.headers["x-voice-id"]
    assert post(a, {"text": "Read-only.", "voice_id": voice_id}).headers["x-voice-cache"] == "hit"
    assert post(a, {"text": "Read-only.", "speaker": "Kept here"}).status_code == 200
    assert post(replicas.servers["b"], {"text": "Read-only.", "voice_id": voice_id}).status_code == 404
    assert not list(replicas.store.glob(f"*/voices/{voice_id}.safetensors"))
