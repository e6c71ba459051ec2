"""config.yaml is deployable: truss push's strict validation, an offline image build context, pinned stack."""

import subprocess
from importlib.metadata import version
from pathlib import Path

import yaml
from truss.base.truss_config import TrussConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def test_config_passes_the_strict_validation_truss_push_runs():
    config = TrussConfig.from_yaml(ROOT / "config.yaml")
    config.validate_forbid_extra()
    assert config.resources.accelerator.accelerator.value == "T4"
    assert config.resources.use_gpu


def test_weights_are_pinned_and_cover_exactly_what_load_reads():
    (weights,) = CONFIG["weights"]
    repo, _, revision = weights["source"].removeprefix("hf://").partition("@")
    assert repo == "coqui/XTTS-v2" and len(revision) == 40
    assert sorted(weights["allow_patterns"]) == ["config.json", "model.pth", "speakers_xtts.pth", "vocab.json"]
    assert Path(weights["mount_location"]).is_absolute()


def test_every_requirement_is_pinned_and_installed_at_that_version():
    for requirement in CONFIG["requirements"]:
        name, _, pinned = requirement.partition("==")
        assert pinned, f"{requirement} is not pinned"
        assert version(name.split("[")[0]) == pinned, requirement


def test_image_build_context_succeeds_offline_and_leaves_dev_files_out(tmp_path):
    build = tmp_path / "build"
    result = subprocess.run(
        [str(Path(__import__("sys").executable).parent / "truss"), "image", "build-context", str(build), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dockerfile = (build / "Dockerfile").read_text()
    assert {"ffmpeg", "libjemalloc2"} <= set((build / "system_packages.txt").read_text().split())
    assert "coqui-tts[ja,zh,ko]==0.28.0" in (build / "requirements.txt").read_text()
    assert "COPY" in dockerfile and (build / "model" / "model.py").is_file()
    assert not (build / "tests").exists() and not (build / "checkpoints").exists()
