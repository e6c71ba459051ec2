#!/usr/bin/env python
"""Write a random-weight XTTS v2 checkpoint in the published file layout.

The real weights cannot be downloaded on our CI machines, so tests and benchmarks run the real
loading and streaming code on checkpoints made here:

    model.pth           as published: {"config": XttsConfig, "model": state_dict}, the config objects
                        pickled under the module paths the published file names; `--layout plain`
                        writes {"model": state_dict}, the layout of fine-tuned checkpoints
    config.json         XttsConfig with the published model_args (sizes aside for `tiny`)
    vocab.json          a `tokenizers` BPE with [START], [STOP], [UNK], [SPACE] and the 17 language tokens
    speakers_xtts.pth   {name: {"gpt_cond_latent", "speaker_embedding"}} for a few studio speakers

Random weights seldom emit the stop token, so generation length is made deterministic:
`--stop-bias` (default -1e4) is added to the stop logit so it is never sampled, and `--max-tokens`
caps generation through config.json (`gpt_max_audio_tokens = max_tokens + 3`, which XTTS turns into
`gpt.max_gen_mel_tokens = max_tokens`). Every utterance is then exactly `--max-tokens` GPT tokens
(about 1114 output samples each at 24 kHz: 4 x 24000/22050 z frames of 256). A positive `--stop-bias` instead makes the stop token win as
soon as it is allowed, which with HF's `min_new_tokens=K` ends after K+1 tokens.

The audio of such a model is noise: it exercises the pipeline, never speech quality.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import pickle
import pickletools
import sys
import time
import types
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from TTS.config.shared_configs import BaseDatasetConfig
from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
from TTS.tts.models.xtts import Xtts

LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{lang}]" for lang in LANGUAGES]

# Names of studio speakers in the published speakers_xtts.pth, so the same default works on both.
STUDIO_SPEAKERS = ["Claribel Dervla", "Ana Florence", "Viktor Eka"]

# Published XTTS v2 values that differ from XttsArgs' defaults (see ../shared/notes/xtts.md).
PUBLISHED_ARGS = {
    "gpt_num_audio_tokens": 1026,
    "gpt_start_audio_token": 1024,
    "gpt_stop_audio_token": 1025,
    "gpt_use_perceiver_resampler": True,
}
REAL_TEXT_TOKENS = 6681
SIZES = {
    "tiny": {"gpt_layers": 2, "gpt_n_model_channels": 64, "gpt_n_heads": 4, "decoder_input_dim": 64},
    "real": {},  # XttsArgs' defaults are the published 30 x 1024, 16 heads
}
DEFAULT_MAX_TOKENS = {"tiny": 60, "real": 602}
LAYOUTS = ("published", "plain")

# The published model.pth was pickled before coqui-tts moved these two classes to
# TTS.tts.configs.xtts_config; the file names them where they were (coqui-ai/TTS#4121).
PUBLISHED_MODULE_PATHS = {XttsArgs: "TTS.tts.models.xtts", XttsAudioConfig: "TTS.tts.models.xtts"}


class _PublishedPickler(pickle._Pickler):
    """Names XttsArgs and XttsAudioConfig under their old module, as the published pickle does.

    The pure-Python pickler, because only it lets a subclass choose the module a class is saved
    under; coqui's classes themselves are left untouched (no __module__ rewrite)."""

    def save_global(self, obj, name=None):
        module = PUBLISHED_MODULE_PATHS.get(obj)
        if module is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)


PUBLISHED_PICKLE = types.ModuleType("published_pickle")
PUBLISHED_PICKLE.Pickler = _PublishedPickler


def save_model(state_dict: dict, config: XttsConfig, path: Path, layout: str = "published") -> None:
    """Write model.pth in the published training-checkpoint layout, or the plain one."""
    if layout == "plain":
        torch.save({"model": state_dict}, path)
    elif layout == "published":
        config = copy.deepcopy(config)
        config.datasets = [BaseDatasetConfig()]  # the published config lists its training set
        torch.save({"config": config, "model": state_dict}, path, pickle_module=PUBLISHED_PICKLE)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")


def pickled_globals(path: Path) -> set[str]:
    """The classes and functions a model.pth's pickle names ("module.name"), without unpickling it."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found = set()
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return found


def _alphabet() -> list[str]:
    """Characters the 17 languages' cleaners can leave in lower-cased text."""
    ranges = [
        (0x21, 0x7E),  # ASCII (romanized ja/zh/ko included)
        (0xA1, 0x17F),  # Latin-1 and Latin Extended-A (accents, Polish, Czech, Hungarian, Turkish)
        (0x400, 0x45F),  # Cyrillic
        (0x600, 0x6FF),  # Arabic
        (0x900, 0x97F),  # Devanagari
    ]
    return [chr(c) for lo, hi in ranges for c in range(lo, hi + 1) if not chr(c).isspace()]


def write_vocab(path: Path, size: str) -> int:
    """Write vocab.json and return its number of tokens."""
    tokens = SPECIAL_TOKENS + [c for c in _alphabet() if c not in SPECIAL_TOKENS]
    if size == "real":
        # Pad with never-produced entries so the text embedding has the published 6681 rows.
        tokens += [f"<unused{i}>" for i in range(REAL_TEXT_TOKENS - len(tokens))]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(path))
    return len(tokens)


def make_config(size: str, n_text_tokens: int, max_tokens: int) -> XttsConfig:
    config = XttsConfig()
    args = config.model_args
    for key, value in {**PUBLISHED_ARGS, **SIZES[size]}.items():
        setattr(args, key, value)
    args.gpt_number_text_tokens = n_text_tokens
    args.gpt_start_text_token = SPECIAL_TOKENS.index("[START]")
    args.gpt_stop_text_token = SPECIAL_TOKENS.index("[STOP]")
    args.gpt_max_audio_tokens = max_tokens + 3  # GPT reserves 1 conditioning + 2 start/stop positions
    return config


def _reference_clip(seconds: float, f0: float, sample_rate: int = 22050) -> torch.Tensor:
    """A harmonic tone with vibrato: enough structure for the encoders, no speech."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * math.pi * f0 * t + 3 * torch.sin(2 * math.pi * 5 * t)
    wav = sum(torch.sin(k * phase) / k for k in range(1, 6))
    return (0.3 * wav / wav.abs().max()).unsqueeze(0)


def build_checkpoint(
    out: Path,
    size: str = "tiny",
    max_tokens: int | None = None,
    stop_bias: float = -1e4,
    seed: int = 0,
    layout: str = "published",
) -> Path:
    """Build a random-weight checkpoint in `out` and return `out`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    max_tokens = DEFAULT_MAX_TOKENS[size] if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= 602:
        raise ValueError("max_tokens must be between 1 and 602 (the published cap)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    n_text_tokens = write_vocab(out / "vocab.json", size)
    config = make_config(size, n_text_tokens, max_tokens)
    config.save_json(str(out / "config.json"))

    model = Xtts(config)
    with torch.no_grad():
        model.gpt.mel_head.bias[config.model_args.gpt_stop_audio_token] = stop_bias
    save_model(model.state_dict(), config, out / "model.pth", layout)

    model.eval()
    speakers = {}
    for i, name in enumerate(STUDIO_SPEAKERS):
        gpt_cond_latent, speaker_embedding = _latents(model, _reference_clip(6.0, f0=110.0 * (1 + i / 2)))
        speakers[name] = {"gpt_cond_latent": gpt_cond_latent, "speaker_embedding": speaker_embedding}
    torch.save(speakers, out / "speakers_xtts.pth")
    return out


@torch.inference_mode()
def _latents(model: Xtts, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gpt_cond_latent = model.get_gpt_cond_latents(clip, 22050)
    speaker_embedding = model.get_speaker_embedding(clip, 22050)
    return gpt_cond_latent.cpu(), speaker_embedding.cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created if needed)")
    parser.add_argument(
        "--max-tokens", type=int, help="GPT tokens per utterance (default: 60 tiny, 602 real, the published cap)"
    )
    parser.add_argument("--stop-bias", type=float, default=-1e4, help="added to the stop token's logit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="published",
        help="model.pth as published (default; pickles the config objects) or plain {'model': state_dict}",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out = build_checkpoint(args.out, args.size, args.max_tokens, args.stop_bias, args.seed, args.layout)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote {args.size} checkpoint ({args.layout} layout) to {out} ({size_mb:.0f} MB) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
