"""Interpolation as a model: the honest baselines ``lanczos-projected`` and ``bicubic-projected``.

With every output projected so that it averages back to its input, interpolation followed by the
same projection (iterative back-projection, Irani & Peleg 1991) is the classical method a network
must beat. As an ``SRModel`` it runs through the same engine as the networks — tiles, value
mapping, the projection, the measurement — so a comparison differs in the network alone.
"""

from __future__ import annotations

import torch
from torch import nn

from medsr.core.resize import resize_bicubic, resize_lanczos
from medsr.models.model import SRModel

RESIZERS = {"lanczos": resize_lanczos, "bicubic": resize_bicubic}
INTERPOLATIONS = {f"{method}-projected": method for method in RESIZERS}


class Interpolation(nn.Module):
    """(B, C, H, W) -> (B, C, H * scale, W * scale) by Pillow's Lanczos or bicubic in float, as
    ``medsr evaluate``'s baselines resize (no parameters; runs on the CPU, returns on the input's device)."""

    def __init__(self, *, method: str, scale: int) -> None:
        super().__init__()
        if method not in RESIZERS:
            raise ValueError(f"interpolation {method!r}: one of {', '.join(RESIZERS)}")
        self.method, self.scale = method, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resize = RESIZERS[self.method]
        height, width = x.shape[2] * self.scale, x.shape[3] * self.scale
        out = [torch.from_numpy(resize(image.float().cpu().numpy(), height, width)) for image in x]
        return torch.stack(out).to(device=x.device, dtype=x.dtype)


def interpolation_model(name: str, *, scale: int = 4) -> SRModel:
    """``lanczos-projected`` or ``bicubic-projected`` at ``scale`` (by default x4, as the x4plus models:
    ``upscale`` runs it at any whole ``outscale`` itself). The projection is the engine's,
    applied to every model's output. Three channels: a gray image is replicated and averaged back,
    which for a per-channel interpolation gives the gray result exactly."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"{name!r}: not an interpolation ({', '.join(INTERPOLATIONS)})")
    return SRModel(module=Interpolation(method=INTERPOLATIONS[name], scale=scale), scale=scale, name=name,
                   architecture="Interpolation", in_channels=3, out_channels=3, precisions=("fp32",))
