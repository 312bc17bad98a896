"""Mask learning (Fig. 2, "mask learning"; Eq. 6-7).

A shared *general feature* at 1/4 of the input, after SOLOv2's unified mask feature: p2..p5
each pass one 3x3 conv at their own resolution (CoordConv on the deepest), are upsampled to
p2's size, summed, and a 1x1 conv gives D channels. (SOLOv2 climbs level by level with a conv
at every step; one conv per level keeps the head within half the backbone's cost on a CPU, and
the deep levels carry semantics more than detail anyway.) Every
descriptor is a 1x1 dynamic kernel: its mask logits are its dot product with the feature at each
position. Loss: dice, averaged over the descriptors that own a ground-truth instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pep.distributed import mean_divisor
from pep.model.descriptors import Descriptors
from pep.model.layers import append_coords, conv_tower, init_conv_weights

MASK_STRIDE = 4


class MaskLearning(nn.Module):
    def __init__(self, in_channels: int, descriptor_dim: int, norm_groups: int, dice_eps: float):
        super().__init__()
        self.dice_eps = dice_eps
        d = descriptor_dim
        # one conv per level p2..p5 at its own resolution; CoordConv on the deepest
        self.branches = nn.ModuleList(conv_tower(in_channels + (2 if i == 3 else 0), d, 1, norm_groups)
                                      for i in range(4))
        self.fuse = nn.Sequential(nn.Conv2d(d, d, 1, bias=False), nn.GroupNorm(min(norm_groups, d), d),
                                  nn.ReLU(inplace=True))
        init_conv_weights(self)

    def general_feature(self, fpn: dict) -> torch.Tensor:
        """p2..p5 -> (B, D, H/4, W/4)."""
        out = self.branches[0](fpn["p2"])
        for i, name in enumerate(("p3", "p4", "p5"), start=1):
            x = append_coords(fpn[name]) if name == "p5" else fpn[name]
            out = out + F.interpolate(self.branches[i](x), size=out.shape[-2:], mode="bilinear",
                                      align_corners=False)
        return self.fuse(out)

    @staticmethod
    def mask_logits(feature: torch.Tensor, descriptors: Descriptors) -> torch.Tensor:
        """(B, D, h, w) feature, N descriptors -> (N, h, w) logits (one 1x1 conv per descriptor)."""
        # In float32 even under mixed precision: the dice loss sums these over every pixel,
        # which overflows float16 on COCO-sized masks.
        with torch.autocast(feature.device.type, enabled=False):
            feature = feature.float()
            out = feature.new_zeros((len(descriptors), *feature.shape[-2:]))
            for b in descriptors.image.unique().tolist():
                rows = descriptors.image == b
                out[rows] = torch.einsum("nd,dhw->nhw", descriptors.kernels[rows].float(), feature[b])
        return out

    def loss(self, feature: torch.Tensor, descriptors: Descriptors, gt_masks: torch.Tensor,
             gt_offsets: torch.Tensor) -> torch.Tensor:
        """Dice loss (Eq. 7) of the descriptors that own an instance. `gt_masks` holds every
        image's soft masks at the feature's scale, concatenated; image b's start at
        `gt_offsets[b]`."""
        owned = descriptors.select(descriptors.gt_index >= 0)
        divisor = mean_divisor(len(owned), feature.device)  # a collective: before any return
        if len(owned) == 0:
            return feature.sum() * 0
        pred = self.mask_logits(feature, owned).sigmoid()
        target = gt_masks[gt_offsets[owned.image] + owned.gt_index]
        return dice_loss(pred, target, self.dice_eps).sum() / divisor


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
