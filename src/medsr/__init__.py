"""medsr: super-resolution of medical images (chest X-rays, retinal fundus photographs).

Public API::

    import medsr
    model = medsr.load_model("realesrgan-x4plus")      # an SRModel: name, scale, ..., module
    sr = medsr.upscale("scan.png", model=model, outscale=2)
    medsr.write_image("scan_x2.png", sr)
    brain = medsr.upscale(medsr.read_volume("brain.nii.gz"), outscale=2)   # in-plane, slice by slice
    medsr.write_volume("brain_x2.nii.gz", brain)

    plan = medsr.plan_outputs(["cxr_folder/"], "cxr_x2/")   # a folder job, one result per file
    for result in medsr.upscale_files(plan, outscale=2):
        print(result.source, result.error or result.target)
"""

import importlib
import logging
from typing import TYPE_CHECKING

from medsr.core.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())  # the application decides what is shown

# The public API, imported on first use (PEP 562): ``import medsr`` and ``medsr --help`` do not pay
# for PyTorch until a name that needs it is used.
_PUBLIC = {
    "FileResult": "medsr.engine.batch", "Plan": "medsr.engine.batch", "plan_outputs": "medsr.engine.batch",
    "upscale_files": "medsr.engine.batch", "upscale": "medsr.engine.upscale",
    "Image": "medsr.formats.io", "ImageError": "medsr.formats.io", "read_frames": "medsr.formats.io",
    "read_image": "medsr.formats.io", "write_frames": "medsr.formats.io", "write_image": "medsr.formats.io",
    "Volume": "medsr.formats.volume", "read_volume": "medsr.formats.volume", "write_volume": "medsr.formats.volume",
    "SRModel": "medsr.models.model", "WeightsError": "medsr.models.weights", "load_model": "medsr.models.weights",
    "RRDBNet": "medsr.nets.rrdbnet", "rrdbnet": "medsr.nets.rrdbnet",
}

_WINGS = ("core", "nets", "formats", "models", "engine", "training", "evaluation", "web", "cli")

if TYPE_CHECKING:
    from medsr.engine.batch import FileResult, Plan, plan_outputs, upscale_files
    from medsr.engine.upscale import upscale
    from medsr.formats.io import Image, ImageError, read_frames, read_image, write_frames, write_image
    from medsr.formats.volume import Volume, read_volume, write_volume
    from medsr.models.model import SRModel
    from medsr.models.weights import WeightsError, load_model
    from medsr.nets.rrdbnet import RRDBNet, rrdbnet


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    if name in _WINGS:  # ``medsr.models.weights`` after a bare ``import medsr``
        return importlib.import_module(f"medsr.{name}")
    raise AttributeError(f"module 'medsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "FileResult",
    "Image",
    "ImageError",
    "RRDBNet",
    "SRModel",
    "Volume",
    "__version__",
    "WeightsError",
    "Plan",
    "load_model",
    "plan_outputs",
    "read_frames",
    "read_image",
    "rrdbnet",
    "upscale",
    "read_volume",
    "upscale_files",
    "write_frames",
    "write_image",
    "write_volume",
]
