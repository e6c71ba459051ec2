import os
import shutil

import pytest
import torch
from conftest import TOKENS, sha256
from local_server import MountError, read_only_mount
from make_checkpoint import PUBLISHED_PICKLE, build_checkpoint
from TTS.tts.configs.xtts_config import XttsConfig
from TTS.tts.models.xtts import Xtts

from model.checkpoint import (
    CHECKPOINT_ENV,
    CheckpointError,
    LoadTimes,
    checkpoint_dir,
    compatible_state_dict,
    load_xtts,
)


@pytest.fixture()
def broken(tiny_checkpoint, tmp_path):
    """A writable copy of the tiny checkpoint to damage."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")


def damage(directory, name, content):
    path = directory / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "name,content,says",
    [
        ("model.pth", None, "missing"),
        ("model.pth", b"", "empty"),
        ("model.pth", b"not a zip archive", "cannot load"),
        ("vocab.json", None, "missing"),
        ("vocab.json", b"{", "cannot read"),
        ("config.json", b"{not json", "cannot read"),
        ("speakers_xtts.pth", b"garbage", "cannot read"),
    ],
)
def test_a_broken_checkpoint_names_the_file(broken, name, content, says):
    path = damage(broken, name, content)
    with pytest.raises(CheckpointError) as info:
        load_xtts(broken, torch.device("cpu"))
    assert str(path) in str(info.value) and says in str(info.value)


def test_a_truncated_model_file_names_the_file(broken):
    path = broken / "model.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot load .*model.pth"):
        load_xtts(broken, torch.device("cpu"))


def test_a_missing_directory_says_how_to_supply_one(tmp_path):
    with pytest.raises(CheckpointError, match=f"does not exist; set {CHECKPOINT_ENV}"):
        load_xtts(tmp_path / "nowhere", torch.device("cpu"))


def test_the_environment_overrides_the_mount(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert checkpoint_dir("/app/model_cache/xtts_v2").as_posix() == "/app/model_cache/xtts_v2"
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path))
    assert checkpoint_dir("/app/model_cache/xtts_v2") == tmp_path


class Payload:
    """Unpickled without weights_only, this would create `marker`: the classic torch.load exploit."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model.pth", "speakers_xtts.pth"])
def test_a_pickle_that_runs_code_is_refused_because_loading_is_weights_only(broken, tmp_path, name):
    marker = tmp_path / "pwned"
    torch.save({"model": {"x": Payload(marker)}, "Ana Florence": Payload(marker)}, broken / name)
    with pytest.raises(CheckpointError, match=name):
        load_xtts(broken, torch.device("cpu"))
    assert not marker.exists()


@pytest.fixture()
def mounted(tiny_checkpoint, tmp_path):
    """The tiny published-layout checkpoint on its own read-only bind mount."""
    try:
        with read_only_mount(tiny_checkpoint, tmp_path / "xtts_v2") as directory:
            yield directory
    except MountError as exc:
        pytest.skip(f"no read-only mount here, so nothing proves a load that cannot write: {exc}")


def test_the_published_layout_loads_from_a_read_only_mount_and_stays_unchanged(mounted, tiny_checkpoint):
    with pytest.raises(OSError):  # the mount really is read-only
        (mounted / "probe").write_bytes(b"")
    before = sha256(tiny_checkpoint / "model.pth"), os.stat(tiny_checkpoint / "model.pth").st_mtime_ns
    times = LoadTimes()
    xtts = load_xtts(mounted, torch.device("cpu"), times)
    assert times.mmap  # the tensors are mapped from the file, not copied
    assert xtts.speaker_manager is not None and xtts.tokenizer.tokenizer is not None
    assert not xtts.gpt.training and not xtts.hifigan_decoder.training
    assert (sha256(mounted / "model.pth"), os.stat(mounted / "model.pth").st_mtime_ns) == before


def test_loading_from_a_writable_directory_writes_nothing_either(broken):
    """coqui-tts's load_checkpoint rewrites a published-layout model.pth in place; this load must not."""
    listing = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, sha256(p)) for p in broken.iterdir()}
    load_xtts(broken, torch.device("cpu"))
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns, sha256(p)) for p in broken.iterdir()} == listing


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a module holds: parameters, buffers (persistent or not) and plain tensor attributes."""
    found = {}
    for name, module in model.named_modules():
        for key, value in {**vars(module), **module._parameters, **module._buffers}.items():
            if isinstance(value, torch.Tensor):
                found[f"{name}.{key}"] = value
    return found


def _audio(model: Xtts) -> torch.Tensor:
    voice = model.speaker_manager.speakers["Ana Florence"]
    torch.manual_seed(0)
    chunks = model.inference_stream("hi.", "en", voice["gpt_cond_latent"], voice["speaker_embedding"], stream_chunk_size=20)
    return torch.cat(list(chunks))


@pytest.fixture(scope="module")
def plain_twin(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint again in the plain layout: same seed, so the same weights."""
    return build_checkpoint(tmp_path_factory.mktemp("plain"), size="tiny", max_tokens=TOKENS, layout="plain")


@pytest.fixture(scope="module")
def coqui_loaded(plain_twin):
    """coqui-tts's own load_checkpoint, which on the plain layout writes nothing."""
    config = XttsConfig()
    config.load_json(str(plain_twin / "config.json"))
    reference = Xtts(config)
    reference.load_checkpoint(config, checkpoint_dir=str(plain_twin), eval=True)
    tensors = {name: tensor.clone() for name, tensor in _tensors(reference).items()}  # before any inference
    return reference, tensors, _audio(reference)


@pytest.mark.parametrize("layout", ["published", "plain"])
def test_the_loaded_model_is_the_one_coqui_load_checkpoint_builds(coqui_loaded, tiny_checkpoint, plain_twin, layout):
    """Same tensors (including those no state dict holds), modes, sizes, speakers and audio as coqui's loader."""
    reference, expected, audio = coqui_loaded
    loaded = load_xtts(tiny_checkpoint if layout == "published" else plain_twin, torch.device("cpu"))
    got = _tensors(loaded)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if not (expected[k].shape == got[k].shape and torch.equal(expected[k], got[k]))] == []
    assert [(n, m.training) for n, m in loaded.named_modules()] == [(n, m.training) for n, m in reference.named_modules()]
    assert loaded.args == reference.args
    assert list(loaded.speaker_manager.speakers) == list(reference.speaker_manager.speakers)
    assert torch.equal(_audio(loaded), audio)


def test_a_legacy_format_file_loads_without_memory_mapping(broken):
    """torch's pre-zip format (old fine-tuned checkpoints) cannot be mapped: it is read into memory instead."""
    state = torch.load(broken / "model.pth", weights_only=False)["model"]  # our own file
    torch.save({"model": state}, broken / "model.pth", _use_new_zipfile_serialization=False)
    times = LoadTimes()
    load_xtts(broken, torch.device("cpu"), times)
    assert times.mmap is False


def test_a_trainer_state_dict_is_renamed_and_stripped_as_coqui_does():
    state = {"xtts.gpt.w": 1, "gpt.v": 2, "dvae.w": 3, "xtts.dvae.b": 4, "torch_mel_spectrogram_dvae.x": 5, "hifigan_decoder.w": 6}
    assert compatible_state_dict(state) == {"gpt.w": 1, "gpt.v": 2, "hifigan_decoder.w": 6}


def test_the_allow_list_lets_no_other_class_in(broken, tmp_path):
    """The published layout's classes are allowed; code smuggled inside its config is still refused."""
    marker = tmp_path / "pwned"
    config = XttsConfig()
    config.model_args.gpt_checkpoint = Payload(marker)
    torch.save({"config": config, "model": {}}, broken / "model.pth", pickle_module=PUBLISHED_PICKLE)
    with pytest.raises(CheckpointError, match="(?s)model.pth.*Unsupported global: GLOBAL io.open"):
        load_xtts(broken, torch.device("cpu"))
    assert not marker.exists()
