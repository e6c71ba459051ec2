"""The voice store: cloned voices' latents and registered names in a directory that replicas share
(Baseten's b10cache), so that a voice id or a name works on every replica, after a restart or a scale
to zero, and in both deployments.

It is a cache, not storage (as b10cache's docs say): a file that is missing, unreadable, corrupt or of
the wrong shape is a voice that is absent, and a store that is read-only, full, gone or hanging leaves
the replica serving from memory. Nothing here raises into a request.

Layout (README "Voices on every replica"), one folder per set of weights, since latents depend on them:

    <voice_store>/<weights>/voices/<voice_id>.safetensors      a clone's latents, by content id
    <voice_store>/<weights>/names/<sha256(name)>.safetensors   a registered name: its latents, with the
                                                               name and voice id in the header

No path is built from client input but a voice id checked to be 32 hex digits; a name is hashed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

logger = logging.getLogger(__name__)

DEFAULT_PARENT = Path("/cache/org")  # b10cache's folder shared by all of an organisation's deployments
DEFAULT_FOLDER = "xtts-streaming-voices"
FORMAT = "1"  # in every file's header; a file of another format is absent
TIMEOUT_S = 1.0  # the longest a request waits for the store; past it the store is left alone for RETRY_S
RETRY_S = 30.0
MAX_THREADS = 8  # lookups at once: a hung network volume holds at most this many threads (and one writer)
MAX_QUEUED_WRITES = 256
TOUCH_S = 600.0  # a voice in use has its file's modification time refreshed at most this often per replica
STALE_TMP_S = 3600.0  # a temporary file this old was left by a writer that died: removed at eviction
MAX_FILE_BYTES = 8 * 2**20  # a real-size voice is 133 KB; anything much larger is not ours
MAX_HEADER_BYTES = 64 * 2**10
VOICE_ID = re.compile(r"[0-9a-f]{32}")
SUFFIX = ".safetensors"

Tensors = dict[str, torch.Tensor]
Signature = tuple[int, int, int]  # a file's (inode, size, mtime in ns): changed whenever it is replaced


class BadFile(ValueError):
    """A store file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Entry:
    tensors: Tensors
    voice_id: str
    signature: Signature


def encode(tensors: Tensors, metadata: dict[str, str]) -> bytes:
    """The bytes of a store file: fp32 tensors on the CPU, and `metadata` with the format in the header."""
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in tensors.items()}
    return safetensors.torch.save(tensors, metadata={**metadata, "format": FORMAT})


def header(data: bytes) -> dict[str, Any]:
    """A safetensors file's JSON header (8 bytes of little-endian length, then the JSON), from its first
    bytes. safetensors reads a header without the tensors only through safe_open, which memory-maps the
    file: listing names should read a few hundred bytes of each, not map files on a network volume."""
    if len(data) < 8:
        raise BadFile(f"{len(data)} bytes is too short for a safetensors header")
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES or len(data) < 8 + length:
        raise BadFile(f"a header of {length} bytes in a file of {len(data)}")
    try:
        parsed = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise BadFile(f"the header is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadFile("the header is not a JSON object")
    return parsed


def decode(data: bytes, shapes: dict[str, tuple[int, ...]]) -> tuple[Tensors, dict[str, str]]:
    """A store file's tensors and metadata, or BadFile: exactly `shapes`' tensors, fp32, all finite."""
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError, or others on malformed input
        raise BadFile(f"not a safetensors file: {str(exc)[:200]}") from None
    metadata = header(data).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise BadFile(f"format {metadata.get('format')!r}, not {FORMAT!r}")
    if set(tensors) != set(shapes):
        raise BadFile(f"tensors {sorted(tensors)}, not {sorted(shapes)}")
    for key, shape in shapes.items():
        tensor = tensors[key]
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != shape:
            raise BadFile(f"{key} is {tensor.dtype} {list(tensor.shape)}, not torch.float32 {list(shape)}")
        if not torch.isfinite(tensor).all():
            raise BadFile(f"{key} has values that are not finite")
    return tensors, metadata


def name_key(name: str) -> str:
    """A name's file stem: a hash, so that no client-chosen string becomes a path."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def weights_folder(source: str) -> str:
    """The per-weights folder: voices computed by other weights are other voices."""
    return "xtts-v2-" + hashlib.sha256(source.encode()).hexdigest()[:12]


class _Unavailable(Exception):
    """The store did not answer in time, or is being left alone after it did not."""


class VoiceStore:
    """One deployment's view of the shared folder. Thread-safe. Every method returns instead of raising:
    a voice the store cannot give is absent (None), a write it cannot take is reported as False."""

    def __init__(self, root: Path, shapes: dict[str, tuple[int, ...]], max_files: int, *, timeout_s: float = TIMEOUT_S):
        self.root = root
        self.voices_dir, self.names_dir = root / "voices", root / "names"
        self.shapes = shapes
        self.max_files = max_files
        self.timeout_s = timeout_s
        self.writable = True
        self._lock = threading.Lock()
        self._threads = threading.BoundedSemaphore(MAX_THREADS)
        self._queue: queue.Queue[Callable[[], Any]] = queue.Queue(MAX_QUEUED_WRITES)
        self._worker: threading.Thread | None = None
        self._down_until = 0.0
        self._logged: set[tuple] = set()  # what was logged once: bad files by signature, errors by kind
        self._touched: OrderedDict[str, float] = OrderedDict()  # path -> when this replica last refreshed it
        self._names: dict[str, tuple[Signature, str | None]] = {}  # listing: file -> (signature, its name)
        self._evicting = self._evict_wanted = False

    # Opening -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, setting: object, shapes: dict[str, tuple[int, ...]], max_files: int, weights: str) -> VoiceStore | None:
        """The store `model_metadata.voice_store` asks for, or None (off), with one log line either way.
        "auto" (or unset): DEFAULT_PARENT/DEFAULT_FOLDER when b10cache is mounted and writable."""
        if setting in (None, "", "auto"):
            if not (DEFAULT_PARENT.is_dir() and os.access(DEFAULT_PARENT, os.W_OK)):
                logger.info(
                    "voice store off: %s is not a writable folder here (b10cache not enabled?); cloned voices and "
                    "names live in each replica's memory only (README \"Voices on every replica\")", DEFAULT_PARENT,
                )
                return None
            folder = DEFAULT_PARENT / DEFAULT_FOLDER
        elif setting is False or str(setting).lower() == "off":
            logger.info("voice store off (model_metadata.voice_store); cloned voices and names live in each replica's memory only")
            return None
        else:
            folder = Path(str(setting))
        store = cls(folder / weights_folder(weights), shapes, max_files)
        try:
            files = store._bounded(store._prepare)
        except _Unavailable:
            logger.warning("voice store %s did not answer within %g s at load; trying again in %g s", store.root, store.timeout_s, RETRY_S)
            return store
        if files is None:
            return None
        logger.info(
            "voice store %s: %d files, at most %d; %s", store.root, files, max_files,
            "read and written" if store.writable else "read-only: voices cloned here stay in this replica's memory",
        )
        return store

    def _prepare(self) -> int | None:
        """Make the folders and find out whether files can be written: the number of files, or None if unusable."""
        try:
            for folder in (self.voices_dir, self.names_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not (self.voices_dir.is_dir() and self.names_dir.is_dir()):
                logger.warning("voice store off: cannot make %s: %s", self.root, exc.strerror or exc)
                return None
        probe = self.voices_dir / f".probe.{secrets.token_hex(8)}.tmp"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            self.writable = False
        return sum(1 for folder in (self.voices_dir, self.names_dir) for entry in os.scandir(folder) if entry.name.endswith(SUFFIX))

    # Voices by id --------------------------------------------------------------------------------

    def voice(self, voice_id: str) -> Tensors | None:
        """The latents stored for this id, or None: absent, bad, or the store unavailable."""
        if not VOICE_ID.fullmatch(voice_id):
            return None
        entry = self._quietly(lambda: self._read(self.voices_dir / f"{voice_id}{SUFFIX}", {"voice_id": voice_id}))
        return entry.tensors if entry else None

    def save_voice(self, voice_id: str, tensors: Tensors) -> None:
        """Store a clone's latents in the background: a request never waits for the write."""
        if VOICE_ID.fullmatch(voice_id) and self.writable:
            data = encode(tensors, {"voice_id": voice_id})
            self._background(lambda: self._write(self.voices_dir / f"{voice_id}{SUFFIX}", data))

    def used(self, voice_id: str) -> None:
        """A voice served from memory: refresh its file's time now and then, so that eviction, which goes
        by that time, does not take a voice that replicas use from memory."""
        if VOICE_ID.fullmatch(voice_id):
            self._refresh(self.voices_dir / f"{voice_id}{SUFFIX}")

    # Names ---------------------------------------------------------------------------------------

    def name(self, name: str, known: Signature | None = None) -> Entry | None:
        """The voice registered under `name`, unless the file is still `known` (the caller has it) or
        cannot be used: then None."""

        def lookup() -> Entry | None:
            path = self.names_dir / f"{name_key(name)}{SUFFIX}"
            if known is not None and _signature(path) == known:
                self._refresh(path)
                return None
            return self._read(path, {"name": name})

        return self._quietly(lookup)

    def save_name(self, name: str, voice_id: str, tensors: Tensors) -> Signature | None:
        """Register `name` for these latents, replacing what it named; waits for the write. The new
        file's signature, or None if the store did not take it."""
        if not self.writable:
            return None
        data = encode(tensors, {"name": name, "voice_id": voice_id})
        path = self.names_dir / f"{name_key(name)}{SUFFIX}"
        return self._quietly(lambda: self._write(path, data))

    def names(self) -> list[str] | None:
        """Every registered name, or None if the store is unavailable. Reads only the header of a file
        not seen before (or replaced since). A listing that outlasts the timeout finishes in the
        background, so the next one reuses what it read, and does not make the store count as down: a
        thousand names on a slow volume are slow, not broken."""
        return self._quietly(self._list_names, trip=False)

    def _list_names(self) -> list[str]:
        found: dict[str, tuple[Signature, str | None]] = {}
        with os.scandir(self.names_dir) as entries:
            for entry in entries:
                if not entry.name.endswith(SUFFIX):
                    continue
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                seen = self._names.get(entry.name)
                found[entry.name] = seen if seen and seen[0] == signature else (signature, self._name_in(entry.path))
        self._names = found
        return sorted({name for _, name in found.values() if name is not None})

    def _name_in(self, path: str) -> str | None:
        try:
            with open(path, "rb") as file:
                start = file.read(8)
                data = start + file.read(min(int.from_bytes(start.ljust(8, b"\0"), "little"), MAX_HEADER_BYTES))
            name = (header(data).get("__metadata__") or {}).get("name")
        except (OSError, BadFile):
            return None
        # A file whose name does not hash to its own file name is not a registration.
        return name if isinstance(name, str) and f"{name_key(name)}{SUFFIX}" == Path(path).name else None

    # Files ---------------------------------------------------------------------------------------

    def _read(self, path: Path, expect: dict[str, str]) -> Entry | None:
        """A file's tensors if it is a good one whose header has `expect`; None if it is absent or bad
        (logged once per version of the file)."""
        try:
            with open(path, "rb") as file:
                stat = os.fstat(file.fileno())
                signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if (str(path), signature) in self._logged:
                    return None
                # Sized by the file (a read of MAX_FILE_BYTES would allocate that much each time), capped by it.
                data = file.read(min(stat.st_size, MAX_FILE_BYTES) + 1)
        except FileNotFoundError:
            return None
        try:
            if len(data) > MAX_FILE_BYTES:
                raise BadFile(f"over {MAX_FILE_BYTES} bytes")
            tensors, metadata = decode(data, self.shapes)
            for key, value in expect.items():
                if metadata.get(key) != value:
                    raise BadFile(f"its header has {key} {metadata.get(key)!r}")
            if not VOICE_ID.fullmatch(metadata.get("voice_id") or ""):
                raise BadFile(f"its header has voice_id {metadata.get('voice_id')!r}")
        except BadFile as exc:
            self._once(
                (str(path), signature), logging.WARNING,
                "voice store: %s is unusable, treated as absent until it is written again: %s", path, exc,
            )
            return None
        if time.time() - stat.st_mtime > TOUCH_S:
            self._refresh(path)
        return Entry(tensors, metadata["voice_id"], signature)

    def _write(self, path: Path, data: bytes) -> Signature | None:
        """`data` at `path`, through a temporary name renamed into place: a reader sees the old file or
        the new one, never part of one, and two replicas writing the same voice at once are harmless."""
        for attempt in (1, 2):
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            try:
                try:
                    with open(temporary, "xb") as file:
                        file.write(data)
                    os.replace(temporary, path)
                except BaseException:
                    temporary.unlink(missing_ok=True)
                    raise
            except FileNotFoundError:
                if attempt == 2:
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)  # the folder was removed while we ran
                continue
            signature = _signature(path)
            self._touch(str(path), time.monotonic())
            self._evict_soon()
            return signature
        return None

    def _refresh(self, path: Path) -> None:
        key = str(path)
        now = time.monotonic()
        with self._lock:
            if not self.writable or now - self._touched.get(key, -TOUCH_S) < TOUCH_S:
                return
        self._touch(key, now)
        self._background(lambda: _utime(path))

    def _touch(self, key: str, when: float) -> None:
        with self._lock:
            self._touched[key] = when
            self._touched.move_to_end(key)
            while len(self._touched) > 2 * self.max_files:
                self._touched.popitem(last=False)

    def _evict_soon(self) -> None:
        """One eviction at a time, run again if files were written while it ran."""
        with self._lock:
            self._evict_wanted = True
            if self._evicting:
                return
            self._evicting = True

        def evict() -> None:
            try:
                while self._evict_wanted:
                    self._evict_wanted = False
                    self._evict()
            finally:
                self._evicting = False

        if not self._background(evict):
            self._evicting = False

    def _evict(self) -> None:
        """Past max_files, remove the files with the oldest modification times (written, or refreshed by
        use), voices and names alike; and temporary files left by writers that died."""
        files: list[tuple[int, str]] = []
        now = time.time()
        for folder in (self.voices_dir, self.names_dir):
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        stat = entry.stat()
                        if entry.name.endswith(".tmp") and now - stat.st_mtime > STALE_TMP_S:
                            os.unlink(entry.path)
                        elif entry.name.endswith(SUFFIX):
                            files.append((stat.st_mtime_ns, entry.path))
                    except FileNotFoundError:  # another replica removed it first
                        pass
        files.sort()
        excess = files[: max(0, len(files) - self.max_files)]
        for _, path in excess:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if excess:
            logger.info("voice store: %d oldest files removed (at most %d)", len(excess), self.max_files)

    # Time bounds and failures --------------------------------------------------------------------

    def _quietly(self, work: Callable[[], Any], trip: bool = True) -> Any:
        """`work` bounded in time; None when the store failed or did not answer, logged once per kind."""
        try:
            return self._bounded(work, trip)
        except _Unavailable:
            return None
        except Exception as exc:  # OSError mostly (EIO, ESTALE, ENOSPC, EROFS...): none may reach a request
            what = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
            self._once(("error", what), logging.WARNING, "voice store %s: %s; voices it cannot give or take stay in memory", self.root, exc)
            return None

    def _bounded(self, work: Callable[[], Any], trip: bool = True) -> Any:
        """Run `work` on a thread of its own and wait at most timeout_s for it, the wait for a free
        thread included. A network volume can hang a read in the kernel, where no timeout reaches: the
        thread is then left to it (at most MAX_THREADS of them, daemon threads, which unlike a
        ThreadPoolExecutor's never hold up the process's exit), and the store is left alone for RETRY_S
        so that requests stop waiting for it (unless not `trip`)."""
        deadline = time.monotonic() + self.timeout_s
        if time.monotonic() < self._down_until:
            raise _Unavailable
        if not self._threads.acquire(timeout=self.timeout_s):
            self._trip()
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:
                box["error"] = exc
            finally:
                self._threads.release()
                done.set()

        threading.Thread(target=run, name="voice-store", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            if not trip:
                self._once(("slow", work.__name__), logging.WARNING, "voice store %s: %s took over %g s; going on in the background",
                           self.root, work.__name__, self.timeout_s)
                raise _Unavailable
            self._trip()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _trip(self) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_S
        self._once(
            ("timeout", int(time.monotonic() // RETRY_S)), logging.WARNING,
            "voice store %s did not answer within %g s: voices come from memory only for %g s", self.root, self.timeout_s, RETRY_S,
        )
        raise _Unavailable

    def _background(self, work: Callable[[], Any]) -> bool:
        """`work` queued for the store's one background thread (writes, time refreshes, eviction), not
        waited for; failures logged once per kind. False if the queue is full, as when that thread hangs
        on the volume: the work is dropped (a voice not stored is one computed again)."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="voice-store-writer", daemon=True)
                self._worker.start()
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            self._once(("queue full", int(time.monotonic() // RETRY_S)), logging.WARNING,
                       "voice store %s: %d writes waiting; dropping more", self.root, self._queue.maxsize)
            return False
        return True

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            try:
                work()
            except Exception as exc:
                what = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
                self._once(("error", what), logging.WARNING, "voice store %s: %s; voices it cannot take stay in memory", self.root, exc)
            finally:
                self._queue.task_done()

    def _once(self, key: tuple, level: int, message: str, *args: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            if len(self._logged) > 4096:
                self._logged.clear()
            self._logged.add(key)
        logger.log(level, message, *args)


def _utime(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:  # removed meanwhile (evicted, or replaced by a writer mid-way): nothing to refresh
        pass


def _signature(path: Path) -> Signature | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
