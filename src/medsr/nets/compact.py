"""A compact super-resolution network for CPUs, with the values contract built in.

The body is the layout of Real-ESRGAN's SRVGGNetCompact (``body.{i}``: a 3x3 convolution, then
(PReLU, 3x3 convolution) ``num_conv`` times, then PReLU and the last convolution to
``out * scale**2`` channels, pixel shuffle), so its parameter names are upstream's. Two differences:
the body's output is added to a *bicubic* upsampling of the input (upstream adds nearest-neighbour
replication; on medical images, whose detail is faint against their range, a network that starts
from replication spends its first thousands of iterations learning interpolation), and one step
without parameters follows:

**The data-consistency layer** (Schlemper et al., IEEE TMI 2018; the range-null-space split of
DDNM, Wang et al., ICLR 2023): the output ``y`` is projected so that each ``scale x scale`` block's
mean is the input pixel under it, ``y + A+ (x - A y)`` with A the block mean and A+ replication. A
loss taken on the output trains the network for exactly what the box mean cannot see, and medsr's
projection after the network has nothing left to correct but the value range and stored levels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Named presets (features, body convolutions); "tiny" is the tests' fixture. Chosen by the
# comparison in docs/BENCHMARKS.md ("Compact models").
COMPACT_PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (8, 2),
    "compact-s": (32, 8),
    "compact-m": (48, 12),
    "compact-l": (64, 16),  # realesr-general-x4v3's size
}


# The body sees the input times this gain, and its output is divided by it: medical detail is faint
# against the [0, 1] of a whole volume's range (soft tissue spans about 0.01 of a CT's), and at gain 1
# training moved slowly. Measured on CT and MR crops, 300 Adam steps: gain 1 +0.68 dB over the start,
# 8 +2.08, 16 +2.12, 32 +2.03 (docs/BENCHMARKS.md, "Compact models"). The same network up to scaling.
INPUT_GAIN = 16.0


class CompactSR(nn.Module):
    """(B, C, H, W) in [0, 1] -> (B, C, H * scale, W * scale); block means equal the input."""

    input_gain: torch.Tensor

    def __init__(self, *, channels: int = 1, scale: int = 2, num_feat: int = 48, num_conv: int = 12,
                 consistent: bool = True) -> None:
        super().__init__()
        if channels not in (1, 3) or scale not in (2, 3, 4) or num_feat < 1 or num_conv < 1:
            raise ValueError(f"CompactSR(channels={channels}, scale={scale}, num_feat={num_feat}, "
                             f"num_conv={num_conv}): channels 1 or 3, scale 2-4, sizes >= 1")
        self.channels, self.scale, self.num_feat, self.num_conv = channels, scale, num_feat, num_conv
        self.consistent = consistent
        # kept in the weights: it tells medsr's compact files from upstream SRVGGNetCompact ones (whose
        # skip is nearest-neighbour at gain 1: the same keys otherwise, another network)
        self.register_buffer("input_gain", torch.tensor(INPUT_GAIN))
        layers: list[nn.Module] = [nn.Conv2d(channels, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        last = nn.Conv2d(num_feat, channels * scale * scale, 3, 1, 1)
        # the last convolution starts at zero: training begins from projected bicubic interpolation
        assert last.bias is not None  # Conv2d's bias=True
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.ModuleList([*layers, last])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.input_gain.to(x.dtype)
        out = x * gain
        for layer in self.body:
            out = layer(out)
        y = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        y = y + F.pixel_shuffle(out, self.scale) / gain
        if self.consistent:  # y + A+ (x - A y): each block's mean becomes its input pixel
            y = y + F.interpolate(x - F.avg_pool2d(y, self.scale), scale_factor=self.scale, mode="nearest")
        return y


def compact(preset: str, *, channels: int = 1, scale: int = 2) -> CompactSR:
    if preset not in COMPACT_PRESETS:
        raise ValueError(f"compact preset {preset!r}: one of {', '.join(COMPACT_PRESETS)}")
    num_feat, num_conv = COMPACT_PRESETS[preset]
    return CompactSR(channels=channels, scale=scale, num_feat=num_feat, num_conv=num_conv)


def is_compact_state(state: dict[str, torch.Tensor]) -> bool:
    """medsr's compact network: SRVGGNetCompact's keys and shapes (``body.0`` a 3x3 convolution,
    ``body.1`` a PReLU) and its ``input_gain`` (upstream's files, without it, go to spandrel)."""
    first, act = state.get("body.0.weight"), state.get("body.1.weight")
    return "input_gain" in state and first is not None and act is not None and first.ndim == 4 and act.ndim == 1


def compact_from_state_dict(state: dict[str, torch.Tensor]) -> CompactSR:
    """A CompactSR shaped for ``state`` (SRVGGNetCompact's layout): its sizes read from the tensors."""
    convs = sorted(int(key.split(".")[1]) for key in state
                   if key.startswith("body.") and key.endswith(".weight") and state[key].ndim == 4)
    if not convs or convs != list(range(0, convs[-1] + 1, 2)):
        raise ValueError("not an SRVGGNetCompact layout (body.{even} convolutions, body.{odd} PReLU)")
    first, last = state["body.0.weight"], state[f"body.{convs[-1]}.weight"]
    channels, num_feat = first.shape[1], first.shape[0]
    ratio = last.shape[0] // channels
    scale = round(ratio ** 0.5)
    if scale * scale * channels != last.shape[0]:
        raise ValueError(f"the last convolution gives {last.shape[0]} channels: not {channels} x scale**2")
    return CompactSR(channels=channels, scale=scale, num_feat=num_feat, num_conv=len(convs) - 2)
