"""Mask learning (Fig. 2, "mask learning"; Eq. 6-7).

A shared *general feature* at 1/4 of the input (SOLOv2's unified mask feature: p2..p5, each
upsampled to p2's size, CoordConv on the deepest, summed, then a 1x1 conv to D channels). Every
descriptor is a 1x1 dynamic kernel: its mask logits are its dot product with the feature at each
position. Loss: dice, averaged over the descriptors that own a ground-truth instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pep.model.descriptors import Descriptors
from pep.model.layers import append_coords, conv_tower, init_conv_weights

MASK_STRIDE = 4


class MaskLearning(nn.Module):
    def __init__(self, in_channels: int, descriptor_dim: int, norm_groups: int, dice_eps: float):
        super().__init__()
        self.dice_eps = dice_eps
        d = descriptor_dim
        # level i (p2..p5) climbs i steps of (conv, x2 upsample) to reach 1/4 scale
        self.branches = nn.ModuleList()
        for i in range(4):
            steps: list[nn.Module] = []
            for k in range(max(i, 1)):
                extra = 2 if (i == 3 and k == 0) else 0  # CoordConv on the deepest level
                steps.append(conv_tower((in_channels + extra) if k == 0 else d, d, 1, norm_groups))
                if i > 0:
                    steps.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*steps))
        self.fuse = nn.Sequential(nn.Conv2d(d, d, 1, bias=False), nn.GroupNorm(min(norm_groups, d), d),
                                  nn.ReLU(inplace=True))
        init_conv_weights(self)

    def general_feature(self, fpn: dict) -> torch.Tensor:
        """p2..p5 -> (B, D, H/4, W/4)."""
        out = None
        for i, (name, branch) in enumerate(zip(("p2", "p3", "p4", "p5"), self.branches)):
            x = append_coords(fpn[name]) if i == 3 else fpn[name]
            y = branch(x)
            if out is not None and y.shape[-2:] != out.shape[-2:]:
                y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return self.fuse(out)

    @staticmethod
    def mask_logits(feature: torch.Tensor, descriptors: Descriptors) -> torch.Tensor:
        """(B, D, h, w) feature, N descriptors -> (N, h, w) logits (one 1x1 conv per descriptor)."""
        out = feature.new_zeros((len(descriptors), *feature.shape[-2:]))
        for b in descriptors.image.unique().tolist():
            rows = descriptors.image == b
            out[rows] = torch.einsum("nd,dhw->nhw", descriptors.kernels[rows], feature[b])
        return out

    def loss(self, feature: torch.Tensor, descriptors: Descriptors,
             gt_masks: list[torch.Tensor]) -> torch.Tensor:
        """Dice loss (Eq. 7) of the descriptors that own an instance. `gt_masks[b]` is image b's
        (G, h, w) soft masks at the feature's scale (area fractions)."""
        owned = descriptors.select(descriptors.gt_index >= 0)
        if len(owned) == 0:
            return feature.sum() * 0
        pred = self.mask_logits(feature, owned).sigmoid()
        target = torch.stack([gt_masks[b][g] for b, g in zip(owned.image.tolist(), owned.gt_index.tolist())])
        return dice_loss(pred, target, self.dice_eps).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-mask 1 - dice, as SOLO: 1 - 2 sum(p g) / (sum(p^2) + sum(g^2) + eps)."""
    p, g = pred.flatten(1).float(), target.flatten(1).float()
    inter = (p * g).sum(1)
    return 1 - 2 * inter / ((p * p).sum(1) + (g * g).sum(1) + eps)


def downsample_masks(masks: torch.Tensor, stride: int = MASK_STRIDE) -> torch.Tensor:
    """(G, H, W) binary -> (G, H/s, W/s) fraction of each cell covered: soft targets that keep
    instances a few pixels wide, which nearest-neighbour sampling would lose."""
    if len(masks) == 0:
        return masks.new_zeros((0, masks.shape[1] // stride, masks.shape[2] // stride), dtype=torch.float32)
    return F.avg_pool2d(masks[:, None].float(), stride)[:, 0]
