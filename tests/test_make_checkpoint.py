import json

import torch
from make_checkpoint import LANGUAGES, STUDIO_SPEAKERS, build_checkpoint
from tokenizers import Tokenizer

from conftest import TOKENS


def test_tiny_checkpoint_has_the_published_layout(tiny_checkpoint):
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == [
        "config.json", "model.pth", "speakers_xtts.pth", "vocab.json"
    ]
    state = torch.load(tiny_checkpoint / "model.pth", weights_only=True)
    assert list(state) == ["model"] and "gpt.mel_head.bias" in state["model"]
    assert 80e6 < (tiny_checkpoint / "model.pth").stat().st_size < 110e6  # about 93 MB


def test_config_has_the_published_token_layout_and_the_cap(tiny_checkpoint):
    args = json.loads((tiny_checkpoint / "config.json").read_text())["model_args"]
    assert (args["gpt_num_audio_tokens"], args["gpt_start_audio_token"], args["gpt_stop_audio_token"]) == (1026, 1024, 1025)
    assert args["gpt_use_perceiver_resampler"] is True
    assert (args["gpt_layers"], args["gpt_n_model_channels"]) == (2, 64)
    assert args["gpt_max_audio_tokens"] == TOKENS + 3


def test_vocab_has_the_special_and_language_tokens(tiny_checkpoint):
    tokenizer = Tokenizer.from_file(str(tiny_checkpoint / "vocab.json"))
    for token in ["[START]", "[STOP]", "[UNK]", "[SPACE]"] + [f"[{lang}]" for lang in LANGUAGES]:
        assert tokenizer.token_to_id(token) is not None, token
    assert tokenizer.encode("[en]hi[SPACE]x").tokens == ["[en]", "h", "i", "[SPACE]", "x"]


def test_speakers_file_holds_latents_per_studio_speaker(tiny_checkpoint):
    speakers = torch.load(tiny_checkpoint / "speakers_xtts.pth", weights_only=True)
    assert list(speakers) == STUDIO_SPEAKERS
    for latents in speakers.values():
        assert latents["gpt_cond_latent"].shape == (1, 32, 64)
        assert latents["speaker_embedding"].shape == (1, 512, 1)


def test_stop_bias_is_written_on_the_stop_logit(tmp_path):
    build_checkpoint(tmp_path, size="tiny", max_tokens=5, stop_bias=7.5)
    bias = torch.load(tmp_path / "model.pth", weights_only=True)["model"]["gpt.mel_head.bias"]
    assert bias[1025] == 7.5
