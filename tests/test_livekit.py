"""LiveKit Agents' Baseten plugin (livekit-plugins-baseten, `TTS(model="qwen3-tts")`) driving the realtime
deployment (config.realtime.yaml) on the real Truss runtime, on the tiny checkpoint: the client voice
agents reach us through, used only through its public API. Our own aiohttp session records the frames
on the wire (a ClientWebSocketResponse subclass), so each turn's audio can be held against the
server's own `audio.done` counts; the server's log says what happened on its side.

Every utterance of the tiny checkpoint is TOKENS GPT tokens (about 1.9 s of audio), whatever its text.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from conftest import request_log_line, speech_wav
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import baseten
from livekit.plugins.baseten import qwen3_tts

RATE = 24000
NO_RETRY = APIConnectOptions(max_retry=0, timeout=60)


@pytest.fixture()
def deployment(realtime):
    """The realtime deployment tests/test_server_realtime.py also uses (tests/conftest.py)."""
    return realtime


class Wire:
    """Every frame of every socket our aiohttp session opens: (socket, "sent" | "got", event or bytes)."""

    def __init__(self):
        self.frames: list[tuple[int, str, dict | bytes]] = []
        self.sockets: list[int] = []
        wire = self

        class Recording(aiohttp.ClientWebSocketResponse):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                wire.sockets.append(id(self))

            async def send_str(self, data: str, compress: int | None = None) -> None:
                wire.frames.append((id(self), "sent", json.loads(data)))
                await super().send_str(data, compress)

            async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
                message = await super().receive(timeout)
                if message.type is aiohttp.WSMsgType.TEXT:
                    wire.frames.append((id(self), "got", json.loads(message.data)))
                elif message.type is aiohttp.WSMsgType.BINARY:
                    wire.frames.append((id(self), "got", message.data))
                return message

        self.response_class = Recording

    def events(self, direction: str, kind: str | None = None, since: int = 0) -> list[dict]:
        return [f for _, d, f in self.frames[since:] if d == direction and isinstance(f, dict) and (kind is None or f["type"] == kind)]

    def audio(self, since: int = 0) -> bytes:
        return b"".join(f for _, d, f in self.frames[since:] if isinstance(f, bytes))


def agent(url: str, wire: Wire, session: aiohttp.ClientSession, **options) -> baseten.TTS:
    """The plugin as a LiveKit voice agent configures it for a Baseten qwen3-tts deployment."""
    return baseten.TTS(model="qwen3-tts", model_endpoint=url, api_key="local", http_session=session,
                       **{"voice": "Ana Florence", **options})


async def turn(tts: baseten.TTS, wire: Wire, text: str) -> tuple[int, list[dict], bytes]:
    """One agent turn through the plugin's stream: text pushed as an LLM streams it, flushed, ended.
    Returns the samples the plugin gave the agent, and this turn's events and audio on the wire."""
    since = len(wire.frames)
    stream = tts.stream(conn_options=NO_RETRY)
    for word in text.split(" "):
        stream.push_text(word + " ")
    stream.flush()
    stream.end_input()
    samples = 0
    async for event in stream:
        frame = event.frame
        assert (frame.sample_rate, frame.num_channels) == (RATE, 1)
        samples += frame.samples_per_channel
    await stream.aclose()
    return samples, wire.events("got", since=since), wire.audio(since)


def check_turn(samples: int, events: list[dict], audio: bytes) -> None:
    """24 kHz s16le, as long as the server's audio.done counts say, all of it handed to the agent."""
    starts = [e for e in events if e["type"] == "audio.start"]
    assert starts and {e["sample_rate"] for e in starts} == {RATE}
    counted = sum(e["samples"] for e in events if e["type"] == "audio.done")
    assert counted > 0 and len(audio) == 2 * counted and samples == counted
    assert events[-1]["type"] == "session.done" and events[-1]["audio_seconds"] == pytest.approx(counted / RATE, abs=1e-3)


def sessions_opened(server) -> int:
    return len(re.findall(r"session \w+: open", server.log.read_text()))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_two_turns_share_one_warm_socket_and_a_keepalive_holds_it(deployment, monkeypatch):
    # The plugin's keepalive comes every 15 s; the test does not wait that long.
    monkeypatch.setattr(qwen3_tts, "_KEEPALIVE_INTERVAL", 0.5)

    async def main():
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session)
            opened = sessions_opened(deployment)
            first = await turn(tts, wire, "Hello, and welcome back. How can I help?")
            mark = len(wire.frames)
            await asyncio.sleep(1.6)  # parked: the plugin's keepalives
            keepalive = wire.frames[mark:]
            second = await turn(tts, wire, "Your order will arrive on Tuesday.")
            await tts.aclose()
            return wire, first, second, keepalive, sessions_opened(deployment) - opened

    wire, first, second, keepalive, opened = run(main())
    check_turn(*first)
    check_turn(*second)
    assert len(set(wire.sockets)) == 1 and opened == 1  # one socket, one session on the server
    assert len(wire.events("sent", "session.config")) == 1  # unchanged settings are not sent again
    sent = [f for _, d, f in keepalive if d == "sent"]
    got = [f for _, d, f in keepalive if d == "got"]
    assert sent and all(f == {"type": "input.done"} for f in sent)
    assert got and all(f == {"type": "session.done", "segments": 0, "audio_seconds": 0.0} for f in got)
    assert wire.events("sent")[-1] == {"type": "session.close"}  # aclose ends the session politely


def test_a_settings_change_between_turns_applies_to_the_next_turn(deployment):
    async def main():
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session, language="en")
            first = await turn(tts, wire, "First in English.")
            tts.update_options(language="de", voice="Viktor Eka")
            second = await turn(tts, wire, "Dann auf Deutsch.")
            await tts.aclose()
            return wire, first, second

    wire, first, second = run(main())
    check_turn(*first)
    check_turn(*second)
    configs = wire.events("sent", "session.config")
    assert [(c["language"], c["voice"]) for c in configs] == [("en", "Ana Florence"), ("de", "Viktor Eka")]
    assert len(wire.events("got", "session.ready")) == 2 and not wire.events("got", "error")
    (start,) = [e for e in second[1] if e["type"] == "audio.start"]
    log = deployment.log.read_text()
    assert re.search(rf"segment \d+ is request {start['request_id']} \(\d+ chars, de\)", log)


def test_language_auto_detects_each_segment(deployment):
    async def main():
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session)  # the plugin's default language: "Auto"
            spoken = await turn(tts, wire, "Bonjour, votre commande arrivera mardi. Gracias por llamar, que tengas un buen día.")
            await tts.aclose()
            return wire, spoken

    wire, spoken = run(main())
    check_turn(*spoken)
    assert wire.events("sent", "session.config")[0]["language"] == "Auto"
    log = deployment.log.read_text()
    languages = [re.search(rf"is request {e['request_id']} \(\d+ chars, ([a-z-]+)\)", log)[1]
                 for e in spoken[1] if e["type"] == "audio.start"]
    assert languages == ["fr", "es"]


def test_an_interrupted_turn_frees_its_engine_slot(deployment):
    async def main():
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session, initial_codec_chunk_frames=2)
            stream = tts.stream(conn_options=NO_RETRY)
            stream.push_text("This reply is cut off by the caller who starts to speak. And this one never comes.")
            stream.flush()
            async for _ in stream:  # the first audio: the caller barges in
                break
            await stream.aclose()
            start = wire.events("got", "audio.start")[0]
            after = await turn(tts, wire, "Sorry, go ahead.")
            await tts.aclose()
            return wire, start, after

    wire, start, after = run(main())
    line = request_log_line(deployment, start["request_id"])
    assert "stopped: the client disconnected" in line
    assert len(set(wire.sockets)) == 2  # the abandoned socket was closed, not parked
    check_turn(*after)
    (next_start,) = [e for e in after[1] if e["type"] == "audio.start"]
    queued = re.search(r"queued (\d+) ms", request_log_line(deployment, next_start["request_id"]))[1]
    assert int(queued) < 1000  # the interrupted turn's slot was free at once


def test_an_unknown_voice_is_the_plugins_error_with_our_message(deployment):
    async def main():
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session, voice="Nobody Here")
            with pytest.raises(APIStatusError) as refused:
                await turn(tts, wire, "Hello.")
            await tts.aclose()
            return refused.value

    error = run(main())
    assert "unknown speaker 'Nobody Here'" in error.message and "Ana Florence" in error.message


def test_a_voice_registered_with_register_voice_is_listed_and_used_by_name(deployment, tmp_path):
    clip = tmp_path / "agent.wav"
    clip.write_bytes(speech_wav())

    async def main():
        voice = await qwen3_tts.register_voice(model_endpoint=deployment.ws_url, api_key="local", name="Support Agent",
                                               ref_audio_path=str(clip), ref_text="unused by XTTS")
        listed = await qwen3_tts.list_voices(model_endpoint=deployment.ws_url, api_key="local")
        wire = Wire()
        async with aiohttp.ClientSession(ws_response_class=wire.response_class) as session:
            tts = agent(deployment.ws_url, wire, session, voice="Support Agent")
            spoken = await turn(tts, wire, "This is your support agent speaking.")
            await tts.aclose()
        with pytest.raises(RuntimeError) as refused:
            await qwen3_tts.register_voice(model_endpoint=deployment.ws_url, api_key="local", name="Ana Florence",
                                           ref_audio_path=str(clip))
        return voice, listed, wire, spoken, refused.value

    voice, listed, wire, spoken, refused = run(main())
    assert voice["name"] == "Support Agent" and re.fullmatch(r"[0-9a-f]{32}", voice["voice_id"])
    assert "Support Agent" in listed["uploaded_voices"] and "Ana Florence" in listed["voices"]
    check_turn(*spoken)
    assert "taken by the studio voice" in str(refused)
