"""U-Net discriminator with spectral norm, as Real-ESRGAN trains with (official parameter names).

Spectral norm uses PyTorch's classic ``torch.nn.utils.spectral_norm``, whose state dict holds
``convN.weight_orig`` with the power-iteration vectors ``convN.weight_u`` / ``convN.weight_v`` --
the layout of the official ``RealESRGAN_x4plus_netD.pth``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm


class UNetDiscriminatorSN(nn.Module):
    """Per-pixel real/fake logits.

    Input: (B, num_in_ch, H, W) in [0, 1], H and W divisible by 8. Output: (B, 1, H, W) logits.
    """

    def __init__(self, *, num_in_ch: int = 3, num_feat: int = 64) -> None:
        super().__init__()
        f = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, f, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(f, f * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(f * 2, f * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(f * 4, f * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(f * 8, f * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(f * 4, f * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(f * 2, f, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(f, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3))) + x2  # decoder with additive skips
        x5 = act(self.conv5(up(x4))) + x1
        x6 = act(self.conv6(up(x5))) + x0
        return self.conv9(act(self.conv8(act(self.conv7(x6)))))


PRESETS: dict[str, dict[str, int]] = {"x4plus": dict(num_feat=64), "tiny": dict(num_feat=4)}


def unet_discriminator(preset: str) -> UNetDiscriminatorSN:
    if preset not in PRESETS:
        raise ValueError(f"unknown discriminator preset {preset!r}; known: {', '.join(PRESETS)}")
    return UNetDiscriminatorSN(**PRESETS[preset])
