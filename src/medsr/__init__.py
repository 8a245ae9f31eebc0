"""medsr: super-resolution of medical images (chest X-rays, retinal fundus photographs).

Public API::

    import medsr
    net = medsr.load_model("realesrgan-x4plus")
    sr = medsr.upscale("scan.png", model=net, outscale=2)
    medsr.write_image("scan_x2.png", sr)
"""

from medsr.io import Image, ImageError, read_image, write_image
from medsr.nets.rrdbnet import RRDBNet, rrdbnet
from medsr.upscale import upscale
from medsr.weights import WeightsError, load_model

__all__ = [
    "Image",
    "ImageError",
    "RRDBNet",
    "WeightsError",
    "load_model",
    "read_image",
    "rrdbnet",
    "upscale",
    "write_image",
]
__version__ = "0.1.0"
