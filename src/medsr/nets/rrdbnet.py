"""RRDBNet, the Real-ESRGAN generator, with the official parameter names.

The names (``conv_first``, ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``,
``conv_up2``, ``conv_hr``, ``conv_last``) match the published checkpoints, so they load with
``strict=True``. Scale 2 and 1 variants fold the input into channels with pixel-unshuffle first and
then share the x4 trunk, as upstream does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; output ``x5 * 0.2 + x``."""

    def __init__(self, *, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.leaky_relu(self.conv1(x), 0.2)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, output ``y * 0.2 + x``."""

    def __init__(self, *, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat=num_feat, num_grow_ch=num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The Real-ESRGAN generator.

    Input: shape (B, num_in_ch, H, W), range [0, 1]; H and W divisible by ``4 // scale``.
    Output: shape (B, num_out_ch, H * scale, W * scale), nominally [0, 1] (not clamped).
    """

    def __init__(
        self,
        *,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        self.num_in_ch = num_in_ch
        # The trunk always upsamples x4; smaller scales fold pixels into channels first.
        self.unshuffle = 4 // scale
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(RRDB(num_feat=num_feat, num_grow_ch=num_grow_ch) for _ in range(num_block))
        )
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Features at LR / ``unshuffle`` resolution: 97% of the work, a reach of ~350 pixels."""
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        return feat + self.conv_body(self.body(feat))

    def head_modules(self) -> tuple[nn.Module, ...]:
        """The convolutions of ``head``, in order."""
        return self.conv_up1, self.conv_up2, self.conv_hr, self.conv_last

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """Upsample features x4: most of the memory, a reach of under 2 feature pixels."""
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


# Named hyperparameter sets. "tiny" has the same structure at a fraction of the cost, for tests.
PRESETS: dict[str, dict[str, int]] = {
    "x4plus": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32),
    "x2plus": dict(scale=2, num_feat=64, num_block=23, num_grow_ch=32),
    "tiny": dict(scale=4, num_feat=8, num_block=2, num_grow_ch=4),
}


def rrdbnet(preset: str, **overrides: int) -> RRDBNet:
    """Build an RRDBNet from a named preset, e.g. ``rrdbnet("x4plus")``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown RRDBNet preset {preset!r}; known: {', '.join(PRESETS)}")
    return RRDBNet(**{**PRESETS[preset], **overrides})


MAX_BLOCKS, MAX_WIDTH = 64, 256  # published models: 23 blocks of 64 features


def rrdbnet_from_state_dict(state_dict: dict[str, torch.Tensor]) -> RRDBNet:
    """Build an RRDBNet whose shape fits ``state_dict``, reading hyperparameters from tensor shapes."""
    try:
        first = state_dict["conv_first.weight"]
        last = state_dict["conv_last.weight"]
        grow = state_dict["body.0.rdb1.conv1.weight"]
    except KeyError as exc:
        raise ValueError(f"not an RRDBNet state dict: missing tensor {exc.args[0]!r}") from None
    blocks = {int(key.split(".")[1]) for key in state_dict if key.startswith("body.") and key.split(".")[1].isdigit()}
    num_out_ch = last.shape[0]
    # Refuse shapes no published RRDBNet has before building anything: a small hostile file could
    # otherwise ask for a network of thousands of blocks or gigabytes of parameters.
    if blocks != set(range(len(blocks))) or not 1 <= len(blocks) <= MAX_BLOCKS:
        raise ValueError(f"RRDB blocks {min(blocks, default=0)}..{max(blocks, default=-1)}: need 1 to {MAX_BLOCKS}, "
                         "numbered from 0 without gaps")
    if not (first.shape[0] <= MAX_WIDTH and grow.shape[0] <= MAX_WIDTH and num_out_ch in (1, 3, 4)):
        raise ValueError(f"features {first.shape[0]}, growth {grow.shape[0]}, channels {num_out_ch}: need at most "
                         f"{MAX_WIDTH} features and 1, 3 or 4 channels")
    # conv_first sees num_in_ch * unshuffle**2 channels; RGB in and out is the only layout published.
    unshuffle_sq = first.shape[1] // num_out_ch
    scale = {1: 4, 4: 2, 16: 1}.get(unshuffle_sq)
    if scale is None or first.shape[1] % num_out_ch:
        raise ValueError(f"cannot infer scale from conv_first.weight of shape {tuple(first.shape)}")
    return RRDBNet(
        scale=scale,
        num_in_ch=num_out_ch,
        num_out_ch=num_out_ch,
        num_feat=first.shape[0],
        num_block=len(blocks),
        num_grow_ch=grow.shape[0],
    )
