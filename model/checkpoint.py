"""Find, check and load an XTTS v2 checkpoint, with errors that name the file at fault."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from TTS.tts.configs.xtts_config import XttsConfig
from TTS.tts.models.xtts import Xtts

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "XTTS_CHECKPOINT_DIR"
REQUIRED_FILES = ("config.json", "vocab.json", "model.pth")
SPEAKERS_FILE = "speakers_xtts.pth"


class CheckpointError(RuntimeError):
    """The checkpoint directory is missing, incomplete or unreadable."""


def checkpoint_dir(default: str | os.PathLike[str]) -> Path:
    """The mounted weights path, unless XTTS_CHECKPOINT_DIR overrides it (local use, tests)."""
    return Path(os.environ.get(CHECKPOINT_ENV) or default)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_xtts(directory: Path, device: torch.device) -> Xtts:
    """Load XTTS the published way, on `device`, in eval mode."""
    config = _read_config(_check_files(directory))
    _check_vocab(directory / "vocab.json")
    _check_speakers(directory / SPEAKERS_FILE)
    model = Xtts(config)
    try:
        # speakers and vocab are proven readable above, so a failure here is model.pth's.
        model.load_checkpoint(config, checkpoint_dir=str(directory), eval=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {directory / 'model.pth'}: {type(exc).__name__}: {exc}") from exc
    return model.to(device)


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


def _check_vocab(path: Path) -> None:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    missing = [t for t in ("[START]", "[STOP]") if tokenizer.token_to_id(t) is None]
    if missing:
        raise CheckpointError(f"{path} lacks the tokens {missing}")


def _check_speakers(path: Path) -> None:
    if not path.exists():
        logger.warning("no %s in the checkpoint: only bundled voices are available", path.name)
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
