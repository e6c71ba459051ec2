import shutil

import pytest
import torch

from model.checkpoint import CHECKPOINT_ENV, CheckpointError, checkpoint_dir, load_xtts


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
