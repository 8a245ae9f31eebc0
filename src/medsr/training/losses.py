"""The fine-tuning losses: L1, VGG19 perceptual, vanilla GAN."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from medsr.nets.vgg import VGG19Features


class PerceptualLoss(nn.Module):
    """Weighted L1 between VGG19 features (before ReLU) of ``sr`` and ``target``.

    The VGG is frozen; gray (1-channel) images are repeated to three channels.
    """

    def __init__(self, vgg: VGG19Features, *, layer_weights: dict[str, float]) -> None:
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)
        self.layer_weights = dict(layer_weights)

    def forward(self, sr: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if sr.shape[1] == 1:
            sr, target = sr.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        sr_feats, target_feats = self.vgg(sr), self.vgg(target.detach())
        return sum((w * F.l1_loss(sr_feats[k], target_feats[k]) for k, w in self.layer_weights.items()),
                   sr.new_zeros(()))  # a tensor also for no layers


def gan_loss(logits: torch.Tensor, *, real: bool) -> torch.Tensor:
    """Vanilla GAN loss: binary cross-entropy with logits against all-real or all-fake labels."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
