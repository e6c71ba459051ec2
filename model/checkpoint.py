"""Find, check and load an XTTS v2 checkpoint, with errors that name the file at fault.

Loading reads and never writes: Baseten mounts the weights read-only. coqui-tts's own
`Xtts.load_checkpoint` is not used, because on the published model.pth it `torch.save`s a converted
copy over the file (and so fails on a read-only mount, or rewrites 1.87 GB on a writable one). This
module does the rest of what it does (tokenizer, speakers, model sizes from the vocabulary, the
state dict's key clean-up, inference mode) in its own order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.initialization import no_init_weights
from TTS.config.shared_configs import BaseDatasetConfig
from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
from TTS.tts.layers.xtts.xtts_manager import SpeakerManager
from TTS.tts.models.xtts import Xtts

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "XTTS_CHECKPOINT_DIR"
REQUIRED_FILES = ("config.json", "vocab.json", "model.pth")
SPEAKERS_FILE = "speakers_xtts.pth"

# What the published model.pth pickles besides tensors, under the paths its pickle names: it was
# written before coqui-tts moved XttsArgs and XttsAudioConfig to TTS.tts.configs.xtts_config.
# torch.load(weights_only=True) builds only these (plain data classes) and refuses anything else.
PUBLISHED_PICKLE_CLASSES = [
    (XttsArgs, "TTS.tts.models.xtts.XttsArgs"),
    (XttsAudioConfig, "TTS.tts.models.xtts.XttsAudioConfig"),
    XttsConfig,
    BaseDatasetConfig,
]
# Training-only modules a coqui Trainer checkpoint may carry (as Xtts.get_compatible_checkpoint_state_dict drops them).
TRAINING_ONLY_KEYS = ("torch_mel_spectrogram_style_encoder", "torch_mel_spectrogram_dvae", "dvae")


class CheckpointError(RuntimeError):
    """The checkpoint directory is missing, incomplete or unreadable."""


@dataclass
class LoadTimes:
    """Seconds per step of loading, for the log and the cold-start benchmark (scripts/bench_cold_start.py)."""

    steps: dict[str, float] = field(default_factory=dict)
    mmap: bool = False  # whether model.pth's tensors are memory-mapped
    _last: float = field(default_factory=time.perf_counter, repr=False)

    def lap(self, step: str) -> None:
        """Record the time since the previous lap (or since creation) as `step`."""
        now = time.perf_counter()
        self.steps[step] = now - self._last
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.steps.items())


def checkpoint_dir(default: str | os.PathLike[str]) -> Path:
    """The mounted weights path, unless XTTS_CHECKPOINT_DIR overrides it (local use, tests)."""
    return Path(os.environ.get(CHECKPOINT_ENV) or default)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_xtts(directory: Path, device: torch.device, times: LoadTimes | None = None) -> Xtts:
    """Load XTTS on `device`, in inference mode, reading the directory and writing nothing."""
    times = LoadTimes() if times is None else times
    config = _read_config(_check_files(directory))
    tokenizer = _read_vocab(directory / "vocab.json")
    speakers = _read_speakers(directory / SPEAKERS_FILE)
    times.lap("files")

    # As load_checkpoint's second init_models() does, the vocabulary sets the text embedding's size.
    args = config.model_args
    args.gpt_number_text_tokens = tokenizer.get_number_tokens()
    args.gpt_start_text_token = tokenizer.tokenizer.token_to_id("[START]")
    args.gpt_stop_text_token = tokenizer.tokenizer.token_to_id("[STOP]")
    # Random initialisation of 467 M parameters that the state dict replaces took 5 to 15 s (real
    # size, 2 CPU threads). transformers' no_init_weights skips torch's init functions meanwhile; the
    # strict load below proves every parameter and persistent buffer is then set from the file.
    with no_init_weights():
        model = Xtts(config)
    model.tokenizer, model.speaker_manager = tokenizer, speakers
    times.lap("build")

    path = directory / "model.pth"
    state_dict, times.mmap = read_state_dict(path)
    try:
        _load_state_dict(model, state_dict)
    except Exception as exc:
        raise CheckpointError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    del state_dict
    times.lap("weights")

    model.hifigan_decoder.eval()
    model.gpt.init_gpt_for_inference(kv_cache=args.kv_cache)
    model.gpt.eval()
    model = model.to(device)
    times.lap("to device")
    return model


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """model.pth's state dict, in the published layout or the plain {"model": ...} one, and whether
    it is memory-mapped. Memory-mapped (copy on write, so the file is never written) when the file
    allows: tensors are read when first used, and never copied into the process's own memory."""
    errors = []
    for mmap in (True, False):  # torch files of the legacy (pre-zip) format cannot be mapped
        try:
            with torch.serialization.safe_globals(PUBLISHED_PICKLE_CLASSES):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # noqa: BLE001 -- retried unmapped; the last error is raised
            errors.append(f"{type(exc).__name__}: {exc}")
    else:
        raise CheckpointError(f"cannot load {path}: {errors[-1]}")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"cannot load {path}: no 'model' state dict in it")
    return compatible_state_dict(checkpoint["model"]), mmap


def compatible_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as Xtts names it: a coqui Trainer's "xtts." prefix dropped, training-only modules removed."""
    renamed = {key.removeprefix("xtts."): value for key, value in state_dict.items()}
    return {key: value for key, value in renamed.items() if key.split(".")[0] not in TRAINING_ONLY_KEYS}


def _load_state_dict(model: Xtts, state_dict: dict[str, torch.Tensor]) -> None:
    # assign: the parameters become the loaded (memory-mapped) tensors instead of copies of them.
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError:
        # XTTS v1 checkpoints carry the inference model's keys too (as load_checkpoint handles them).
        model.gpt.init_gpt_for_inference(kv_cache=model.args.kv_cache)
        model.load_state_dict(state_dict, strict=True, assign=True)


def _check_files(directory: Path) -> Path:
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint directory {directory} does not exist; set {CHECKPOINT_ENV} to a directory with "
            f"{', '.join(REQUIRED_FILES)} (scripts/make_checkpoint.py writes a random-weight one)"
        )
    for name in REQUIRED_FILES:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint file {path} is empty")
    return directory


def _read_config(directory: Path) -> XttsConfig:
    path = directory / "config.json"
    try:
        json.loads(path.read_text())
        config = XttsConfig()
        config.load_json(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    return config


def _read_vocab(path: Path) -> VoiceBpeTokenizer:
    try:
        tokenizer = VoiceBpeTokenizer(vocab_file=path)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    missing = [t for t in ("[START]", "[STOP]") if tokenizer.tokenizer.token_to_id(t) is None]
    if missing:
        raise CheckpointError(f"{path} lacks the tokens {missing}")
    return tokenizer


def _read_speakers(path: Path) -> SpeakerManager | None:
    if not path.exists():
        logger.warning("no %s in the checkpoint: only bundled voices are available", path.name)
        return None
    try:
        return SpeakerManager(path)  # torch.load(weights_only=True) on torch >= 2.4
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
