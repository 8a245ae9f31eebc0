"""The networks training starts from besides the generator: the U-Net discriminator (from a file)
and VGG19 with torchvision's ImageNet weights (found, or downloaded and checked by SHA-256)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch

from medsr.models.downloads import download, medsr_home, offline
from medsr.models.state_dicts import WeightsError, check_fits, read_state_dict
from medsr.nets.unet import UNetDiscriminatorSN, unet_discriminator
from medsr.nets.vgg import VGG19Features

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
    found: Path | None
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
