"""config.yaml is deployable: truss push's strict validation, an offline image build context, pinned stack."""

import shutil
import subprocess
import sys
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


# The realtime deployment: `truss push --config config.realtime.yaml`.
REALTIME = yaml.safe_load((ROOT / "config.realtime.yaml").read_text())


def test_realtime_config_passes_the_strict_validation_truss_push_runs():
    config = TrussConfig.from_yaml(ROOT / "config.realtime.yaml")
    config.validate_forbid_extra()
    assert config.runtime.transport.kind == "websocket"
    assert (config.model_module_dir, config.model_class_filename, config.model_class_name) == ("model", "realtime.py", "Model")
    assert config.resources.accelerator.accelerator.value == "T4" and config.resources.use_gpu


def test_realtime_config_serves_the_same_model_on_the_same_stack():
    for key in ("python_version", "weights", "requirements", "system_packages", "resources", "environment_variables"):
        assert REALTIME[key] == CONFIG[key], key
    # The serving limits and voices too: only the session's own limits are added.
    assert {k: v for k, v in REALTIME["model_metadata"].items() if k in CONFIG["model_metadata"]} == {
        k: v for k, v in CONFIG["model_metadata"].items() if k != "example_model_input"}


def test_realtime_image_build_context_succeeds_offline_with_its_config(tmp_path):
    # `truss push --config config.realtime.yaml` uploads the package with that file's bytes as its
    # config.yaml (truss/remote/baseten/remote.py); `image build-context` ignores --config, so the
    # package is laid out that way here and built.
    package = tmp_path / "package"
    for name in ("model", "data"):
        shutil.copytree(ROOT / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".truss_ignore", package)
    shutil.copy(ROOT / "config.realtime.yaml", package / "config.yaml")
    build = tmp_path / "build"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "truss"), "image", "build-context", str(build), str(package)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    built = yaml.safe_load((build / "config.yaml").read_text())
    assert built["runtime"]["transport"]["kind"] == "websocket" and built["model_class_filename"] == "realtime.py"
    assert (build / "model" / "realtime.py").is_file() and (build / "model" / "session.py").is_file()
    assert {"ffmpeg", "libjemalloc2"} <= set((build / "system_packages.txt").read_text().split())
    assert "coqui-tts[ja,zh,ko]==0.28.0" in (build / "requirements.txt").read_text()
