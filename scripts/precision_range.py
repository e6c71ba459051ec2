#!/usr/bin/env python
"""How close XTTS's activations come to float16's limit (65504): the largest magnitude at every layer's
inputs and outputs over a prompt and some decode steps (GPT) and one chunk (HiFiGAN), in float32.

    .venv/bin/python scripts/precision_range.py [--checkpoint checkpoints/real] [--tokens 40]

On a random-weight checkpoint this is a proxy only: trained weights have their own scales (GPT-2 class
models are known for a few large residual channels), so the published weights need the same run before
float16 is trusted (README "Sizing"). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from model.checkpoint import load_xtts  # noqa: E402
from model.decoding import Decoder, Piece, sample  # noqa: E402
from model.engine import PREFILL_PIECE  # noqa: E402
from model.slots import Sampling  # noqa: E402
from model.vocoder import Windowed  # noqa: E402

FLOAT16_MAX = torch.finfo(torch.float16).max


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "real")
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    xtts = load_xtts(args.checkpoint, torch.device("cpu"))
    largest: dict[str, float] = {}

    def watch(name: str):
        def hook(module, inputs, output):
            for tensor in (*[i for i in inputs if torch.is_tensor(i)], output):
                if torch.is_tensor(tensor) and tensor.is_floating_point():
                    largest[name] = max(largest.get(name, 0.0), tensor.abs().max().item())
        return hook

    for name, module in xtts.gpt.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)) or type(module).__name__ == "Conv1D":
            module.register_forward_hook(watch(f"gpt.{name}"))
    for name, module in xtts.hifigan_decoder.waveform_decoder.named_modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.register_forward_hook(watch(f"hifigan.{name}"))

    speaker = next(iter(xtts.speaker_manager.speakers.values()))
    with torch.inference_mode():
        decoder = Decoder.for_model(xtts.gpt, 1)
        decoder.table.assign(0, Sampling(), torch.Generator().manual_seed(0))
        decoder.table.restart(0, [1, xtts.gpt.start_audio_token])
        text = torch.IntTensor(xtts.tokenizer.encode("the quick brown fox jumps over the lazy dog.", lang="en"))[None]
        prompt = decoder.prompt(speaker["gpt_cond_latent"], text)
        for start in range(0, len(prompt), PREFILL_PIECE):
            latents, logits = decoder.forward([], [], [], [Piece(0, prompt[start : start + PREFILL_PIECE])])
        windowed = Windowed(xtts, speaker["speaker_embedding"], 1.0)
        for position in range(1, args.tokens + 1):
            windowed.add(latents[:1])
            token = sample(logits[:1], decoder.table, [0])[0]
            latents, logits = decoder.forward([0], [token], [position], [])
        windowed.chunk(final=True)

    gpt = {k: v for k, v in largest.items() if k.startswith("gpt.")}
    hifigan = {k: v for k, v in largest.items() if k.startswith("hifigan.")}
    worst = max(largest.items(), key=lambda kv: kv[1])
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "tokens": args.tokens, "float16_max": FLOAT16_MAX,
        "gpt_largest": max(gpt.values()), "gpt_worst_site": max(gpt, key=gpt.get),
        "hifigan_largest": max(hifigan.values()), "hifigan_worst_site": max(hifigan, key=hifigan.get),
        "headroom": FLOAT16_MAX / worst[1],
        "gpt_top5": sorted(gpt.items(), key=lambda kv: -kv[1])[:5],
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
