"""What a loaded model is: the network and what the engine must know to run it.

``medsr.load_model`` returns an ``SRModel``. RRDBNet (Real-ESRGAN and medsr's own models) is built
by medsr and runs on its exact trunk/head tiling; other super-resolution architectures (SwinIR,
HAT, SRVGGNetCompact, ...) load through the optional ``spandrel`` package (``medsr[zoo]``) and run
on generic overlap-blended tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from medsr.nets.compact import CompactSR
from medsr.nets.rrdbnet import RRDBNet

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

ALL_PRECISIONS = ("fp32", "bf16", "fp16")
TILING = ("supported", "discouraged", "internal")  # spandrel's ModelTiling, in lower case


@dataclass(frozen=True, kw_only=True)
class Domain:
    """What a model was trained on, so that an image outside it is named (it still runs).

    Attributes:
        description: in words, for messages ("8-bit chest X-rays, NIH ChestX-ray14").
        modalities: DICOM Modality codes of the images it knows (CR, DX, ...); empty: none of them
            (a model of photographs).
        channels: 1 (gray) and/or 3 (colour).
        bit_depths: of the files it was trained on (8, 16).
    """

    description: str
    modalities: tuple[str, ...] = ()
    channels: tuple[int, ...] = (1, 3)
    bit_depths: tuple[int, ...] = (8,)

    def mismatch(self, *, modality: str | None, channels: int, bit_depth: int | None) -> str | None:
        """What about an image lies outside the domain, in words; None when nothing does.
        ``bit_depth`` None: floating-point values (a float volume), which no model here was trained on."""
        found = []
        if modality is not None and modality not in self.modalities:
            found.append(f"DICOM Modality {modality}")
        if channels not in self.channels:
            found.append("gray" if channels == 1 else "colour")
        if bit_depth is None:
            found.append("floating-point values")
        elif bit_depth not in self.bit_depths:
            found.append(f"{bit_depth}-bit")
        return ", ".join(found) or None


@dataclass(frozen=True, kw_only=True, eq=False)
class SRModel:
    """A super-resolution network and what the engine needs to know about it.

    ``module`` maps (1, in_channels, H, W) in [0, 1] to (1, out_channels, H * scale, W * scale);
    inputs are padded (by replication) to a multiple of ``size_multiple`` and to ``min_size``. The
    engine never changes ``module``: it runs a prepared copy where the device or mode differ.
    """

    module: nn.Module
    scale: int
    name: str = "model"
    architecture: str = ""
    in_channels: int = 3
    out_channels: int = 3
    size_multiple: int = 1
    min_size: int = 0
    precisions: tuple[str, ...] = ALL_PRECISIONS  # fp32, bf16, fp16: what the architecture runs in
    # (checkpoint file, its SHA-256) for each file the weights came from (two for a fidelity blend);
    # empty for a module built in memory
    sources: tuple[tuple[Path, str], ...] = ()
    domain: Domain | None = None  # what it was trained on, where known
    # spandrel's advice for the architecture: "supported"; "discouraged" (tiles change the output: the
    # automatic choice runs the whole image); "internal" (the network tiles itself: never tiled here)
    tiling: str = "supported"

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, not {type(self.module).__name__}")
        if self.scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"scale {self.scale}: super-resolution models here scale by 1, 2, 3, 4 or 8")
        if self.in_channels not in (1, 3) or self.out_channels != self.in_channels:
            raise ValueError(f"{self.name}: {self.in_channels} channels in, {self.out_channels} out; medsr runs "
                             "models that take and give 1 (gray) or 3 (RGB) channels")
        if self.size_multiple < 1 or self.min_size < 0:
            raise ValueError(f"size_multiple {self.size_multiple} and min_size {self.min_size}: need >= 1 and >= 0")
        if self.tiling not in TILING:
            raise ValueError(f"tiling {self.tiling!r}: one of {', '.join(TILING)}")
        unknown = set(self.precisions) - set(ALL_PRECISIONS)
        if unknown or "fp32" not in self.precisions:
            raise ValueError(f"precisions {self.precisions}: fp32 and any of bf16, fp16")
        if not self.architecture:
            object.__setattr__(self, "architecture", type(self.module).__name__)
        if isinstance(self.module, RRDBNet):
            self._check_rrdbnet(self.module)

    def _check_rrdbnet(self, net: RRDBNet) -> None:
        """The engine's RRDBNet path works in the network's own units: its facts must be the network's."""
        if self.size_multiple == 1:  # pixel-unshuffle needs sizes divisible by 4 / scale
            object.__setattr__(self, "size_multiple", net.unshuffle)
        facts = {"scale": net.scale, "size_multiple": net.unshuffle, "in_channels": net.num_in_ch,
                 "out_channels": net.conv_last.out_channels}
        wrong = [f"{key}={getattr(self, key)} (the network: {value})" for key, value in facts.items()
                 if getattr(self, key) != value]
        if wrong:
            raise ValueError(f"{self.name}: an RRDBNet described with {', '.join(wrong)}")

    @property
    def exact_tiles(self) -> bool:
        """RRDBNet runs on medsr's trunk/head tiles (exact apart from the blended overlaps)."""
        return isinstance(self.module, RRDBNet)


def describe_rrdbnet(net: RRDBNet, *, name: str = "RRDBNet", sources: tuple[tuple[Path, str], ...] = (),
                     domain: Domain | None = None) -> SRModel:
    """The descriptor of an RRDBNet (a fixed scale; pixel-unshuffle needs sizes divisible by 4 / scale)."""
    return SRModel(module=net, scale=net.scale, name=name, in_channels=net.num_in_ch,
                   out_channels=net.conv_last.out_channels, sources=sources, domain=domain)


def describe_compact(net: CompactSR, *, name: str = "CompactSR", sources: tuple[tuple[Path, str], ...] = (),
                     domain: Domain | None = None) -> SRModel:
    """The descriptor of a compact network (any size; its data-consistency layer works per LR pixel,
    so overlap-blended tiles on the LR grid keep it)."""
    return SRModel(module=net, scale=net.scale, name=name, architecture="CompactSR", in_channels=net.channels,
                   out_channels=net.channels, sources=sources, domain=domain)


def as_model(model: SRModel | nn.Module) -> SRModel:
    """An ``SRModel`` for the engine: as given, or an RRDBNet described. Other bare modules lack the
    facts the engine needs (scale, channels, size multiple): give them as ``SRModel(module=..., scale=...)``."""
    if isinstance(model, SRModel):
        return model
    if isinstance(model, RRDBNet):
        return describe_rrdbnet(model)
    if isinstance(model, CompactSR):
        return describe_compact(model)
    raise TypeError(f"model: give a name, a checkpoint path, an SRModel or an RRDBNet, not {type(model).__name__} "
                    "(wrap other networks as medsr.SRModel(module=net, scale=...))")


class _SpandrelModule(nn.Module):
    """A spandrel model as a module: its descriptor's call (padding to the architecture's size needs,
    its own input and output conventions, clamping) on the module's own weights."""

    def __init__(self, descriptor: ImageModelDescriptor) -> None:
        super().__init__()
        self.descriptor = descriptor  # not a Module: deep copies copy it with ``net``, which it holds
        self.net = descriptor.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor(x)


def spandrel_import_problem() -> str | None:
    """Why spandrel cannot be used here, or None when it can."""
    try:
        import spandrel  # noqa: F401
    except ImportError:
        return "the optional package spandrel is not installed (pip install 'medsr[zoo]')"
    except Exception as exc:  # torchvision that does not fit the installed torch fails with RuntimeError
        return (f"spandrel is installed but cannot be imported ({type(exc).__name__}: {exc}); it needs a "
                "torchvision built for the installed torch")
    return None


def load_foreign(state: dict[str, torch.Tensor], *, source: Path, sha256: str) -> SRModel:
    """An architecture other than RRDBNet, recognised by spandrel from its weights.

    Raises:
        ValueError: spandrel is missing, does not recognise the weights, or they are not a
            single-image super-resolution model medsr can run.
    """
    problem = spandrel_import_problem()
    if problem:
        raise ValueError(f"{source}: not an RRDBNet checkpoint, and other architectures need spandrel: {problem}")
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ValueError(f"{source}: neither an RRDBNet nor an architecture spandrel knows") from None
    except Exception as exc:  # spandrel's detectors raise many types for a damaged or partial file
        raise ValueError(f"{source}: spandrel recognised the weights but could not build the network "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise ValueError(f"{source}: a {descriptor.architecture.name} model for {descriptor.purpose}, not "
                         "single-image super-resolution")
    needs = descriptor.size_requirements
    if needs.square:
        raise ValueError(f"{source}: {descriptor.architecture.name} needs square inputs; medsr does not run those")
    precisions = ("fp32",) + ("bf16",) * descriptor.supports_bfloat16 + ("fp16",) * descriptor.supports_half
    try:
        return SRModel(module=_SpandrelModule(descriptor).eval(), scale=descriptor.scale, name=source.name,
                       architecture=descriptor.architecture.name, in_channels=descriptor.input_channels,
                       out_channels=descriptor.output_channels, size_multiple=needs.multiple_of,
                       min_size=needs.minimum, precisions=precisions, sources=((source, sha256),),
                       tiling=descriptor.tiling.name.lower())
    except ValueError as exc:
        raise ValueError(f"{source}: {descriptor.architecture.name}: {exc}") from None
