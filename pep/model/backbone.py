"""Feature extractor (Fig. 2, left): torchvision's ResNet + FPN, levels as SOLOv2 uses them."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pep.model.scopes import scope

# torchvision's resnet stages, from the last (trained first) to the stem.
_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]
FPN_NAMES = ["p2", "p3", "p4", "p5", "p6"]
# SOLOv2 resizes p2 to p3's size and p6 to p5's: the stride each level's head works at.
LEVEL_STRIDE = {"p2": 8, "p3": 8, "p4": 16, "p5": 32, "p6": 32}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_weights(depth: int, pretrained: bool):
    """ImageNet weights through torchvision's enums (downloaded on first use), or None."""
    if not pretrained:
        return None
    return get_model_weights(f"resnet{depth}").DEFAULT


class FeatureExtractor(nn.Module):
    """Normalised image -> ResNet -> FPN.

    `forward` returns the FPN outputs p2..p6 as a dict; the
    general feature of mask learning reads p2..p5, and `level_features` gives the features of
    the semantics levels, resized as SOLOv2 does.
    """

    def __init__(self, depth: int, pretrained: bool, trainable_layers: int, norm: str,
                 fpn_channels: int, level_names: list[str]):
        super().__init__()
        norm_layer = FrozenBatchNorm2d if norm == "frozen_batch" else nn.BatchNorm2d
        resnet = get_model(f"resnet{depth}", weights=resnet_weights(depth, pretrained),
                           norm_layer=norm_layer)
        trainable = set(_STAGES[:trainable_layers])
        if trainable_layers == 5:
            trainable.add("bn1")
        for name, param in resnet.named_parameters():
            if not any(name.startswith(stage) for stage in trainable):
                param.requires_grad_(False)
        in_channels = [resnet.inplanes // 8 * 2 ** i for i in range(4)]  # layer1..layer4 widths
        self.body = BackboneWithFPN(  # p6 is a parameter-free max-pool of p5
            resnet, return_layers={f"layer{i + 1}": str(i) for i in range(4)},
            in_channels_list=in_channels, out_channels=fpn_channels, extra_blocks=LastLevelMaxPool())
        self.level_names = list(level_names)
        self.out_channels = fpn_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """images (B, 3, H, W) in [0, 1], H and W multiples of 32."""
        # BackboneWithFPN's own forward, in two scopes
        with scope("backbone"):
            feats = self.body.body((images - self.mean) / self.std)
        with scope("fpn"):
            feats = self.body.fpn(feats)
        return OrderedDict(zip(FPN_NAMES, feats.values()))

    def level_features(self, fpn: "OrderedDict[str, torch.Tensor]") -> list[torch.Tensor]:
        out = []
        for name in self.level_names:
            x = fpn[name]
            if name == "p2":
                x = F.interpolate(x, size=fpn["p3"].shape[-2:], mode="bilinear", align_corners=False)
            elif name == "p6":
                x = F.interpolate(x, size=fpn["p5"].shape[-2:], mode="bilinear", align_corners=False)
            out.append(x)
        return out
