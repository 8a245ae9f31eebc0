"""VGG19 feature extractor with torchvision's key layout (``features.{i}.weight``), for the
perceptual loss. Only the convolutional part is built; a torchvision checkpoint's ``classifier``
tensors are ignored."""

from __future__ import annotations

import torch
from torch import nn

# torchvision's VGG19 ("E") layer list: channel counts, "M" for max-pooling.
VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices in ``features`` of the convolutions whose outputs (before ReLU) feed the loss.
LAYER_INDEX = {"conv1_2": 2, "conv2_2": 7, "conv3_4": 16, "conv4_4": 25, "conv5_4": 34}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """Outputs of chosen conv layers (before their ReLU) for ImageNet-normalised input.

    Input: (B, 3, H, W) in [0, 1]. Output: dict layer name -> feature map.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, *, layers: tuple[str, ...] = tuple(LAYER_INDEX)) -> None:
        super().__init__()
        unknown = set(layers) - set(LAYER_INDEX)
        if unknown:
            raise ValueError(f"unknown VGG19 layers {sorted(unknown)}; known: {', '.join(LAYER_INDEX)}")
        self.layers = layers
        last = max(LAYER_INDEX[name] for name in layers)
        modules: list[nn.Module] = []
        channels = 3
        for spec in VGG19_LAYERS:
            if isinstance(spec, str):  # "M"
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, spec, 3, 1, 1), nn.ReLU(inplace=False)]
                channels = spec
        self.features = nn.Sequential(*modules[: last + 1])  # nothing past the last layer used
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = {LAYER_INDEX[name]: name for name in self.layers}
        out, x = {}, (x - self.mean) / self.std
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
        return out
