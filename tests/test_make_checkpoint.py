import json
import pickle

import pytest
import torch
from conftest import TOKENS
from make_checkpoint import LANGUAGES, STUDIO_SPEAKERS, build_checkpoint, pickled_globals
from tokenizers import Tokenizer

from model.checkpoint import PUBLISHED_PICKLE_CLASSES, read_state_dict

# What Hugging Face's pickle scan lists for the published coqui/XTTS-v2 model.pth (and coqui-ai/TTS#4121 shows).
PUBLISHED_CLASSES = {
    "TTS.tts.configs.xtts_config.XttsConfig",
    "TTS.tts.models.xtts.XttsArgs",
    "TTS.tts.models.xtts.XttsAudioConfig",
    "TTS.config.shared_configs.BaseDatasetConfig",
}
TENSOR_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "torch.LongStorage"}


def test_tiny_checkpoint_has_the_published_layout(tiny_checkpoint):
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == [
        "config.json", "model.pth", "speakers_xtts.pth", "vocab.json"
    ]
    path = tiny_checkpoint / "model.pth"
    assert pickled_globals(path) == PUBLISHED_CLASSES | TENSOR_GLOBALS
    # As with the published file, torch's default allow-list refuses it: the test bed meets what production meets.
    with pytest.raises(pickle.UnpicklingError, match="TTS.tts.configs.xtts_config.XttsConfig"):
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals(PUBLISHED_PICKLE_CLASSES):
        checkpoint = torch.load(path, weights_only=True)
    assert list(checkpoint) == ["config", "model"] and "gpt.mel_head.bias" in checkpoint["model"]
    config = checkpoint["config"]
    assert config.model_args.gpt_layers == 2 and len(config.datasets) == 1
    assert 80e6 < path.stat().st_size < 110e6  # about 93 MB


def test_the_plain_layout_is_behind_a_flag(tmp_path):
    build_checkpoint(tmp_path, size="tiny", max_tokens=5, layout="plain")
    assert pickled_globals(tmp_path / "model.pth") == TENSOR_GLOBALS
    assert list(torch.load(tmp_path / "model.pth", weights_only=True)) == ["model"]


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
    bias = read_state_dict(tmp_path / "model.pth")[0]["gpt.mel_head.bias"]
    assert bias[1025] == 7.5
