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

import logging

from medsr.core.version import __version__
from medsr.engine.batch import FileResult, Plan, plan_outputs, upscale_files
from medsr.engine.upscale import upscale
from medsr.formats.io import Image, ImageError, read_frames, read_image, write_frames, write_image
from medsr.formats.volume import Volume, read_volume, write_volume
from medsr.models.model import SRModel
from medsr.models.weights import WeightsError, load_model
from medsr.nets.rrdbnet import RRDBNet, rrdbnet

logging.getLogger(__name__).addHandler(logging.NullHandler())  # the application decides what is shown

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
