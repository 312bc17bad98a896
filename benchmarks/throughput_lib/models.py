"""The models the throughput benchmark times, each wrapped as a `Subject`.

A subject is a model with one training forward (its summed losses) and one inference forward
of the batch, both closures over that batch: the PEP variants (`pep.model.build_model`), the
PEP backbone + FPN alone (`FeatureExtractor`), torchvision's Mask R-CNN with its default heads
on a given backbone, and the matched comparison's subjects (the coco profile's PEP, its
`baseline` and `pep` variants, and Mask R-CNN on `resnet_fpn_backbone` of the same depth, norm
and trainable stages). All start from fresh weights (the demo comparison's PEP variants may
then load trained ones); nothing is downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from pep.config import VARIANTS
from pep.model import build_model
from pep.model.backbone import FeatureExtractor

from .batches import Batch

MASKRCNN = "maskrcnn"
BACKBONE = "backbone"
MODELS = (*VARIANTS, MASKRCNN, BACKBONE)
MATCHED_PROFILE = "coco"  # the params.yaml profile that holds the paper's widths
MATCHED_VARIANT = "pep"  # the full model; `baseline` is timed beside it


@dataclass
class Subject:
    """A model and how to run one training forward and one inference forward of the batch."""

    model: nn.Module
    loss: Callable[[], torch.Tensor]
    predict: Callable[[], int | None]  # detections in the batch; None for the bare backbone


# --- demo widths ---

def feature_extractor(cfg: dict) -> FeatureExtractor:
    """The PEP backbone + FPN of `cfg`, always with fresh weights (no download)."""
    m, bb = cfg["model"], cfg["model"]["backbone"]
    return FeatureExtractor(bb["depth"], False, bb["trainable_layers"], bb["norm"], m["fpn_channels"],
                            m["levels"]["features"])


def build_subject(name: str, cfg: dict, batch: Batch) -> Subject:
    images, targets = batch.images, batch.targets
    if name in VARIANTS:
        pep = build_model(cfg, name, batch.category_ids)
        return Subject(pep, lambda: sum(pep(images, targets).values()),
                       lambda: sum(len(p["scores"]) for p in pep(images, targets)))
    if name == BACKBONE:
        fe = feature_extractor(cfg)

        def features_only() -> None:
            fe(images)
        return Subject(fe, lambda: sum(level.mean() for level in fe(images).values()), features_only)
    return maskrcnn_subject(feature_extractor(cfg).body, batch)


def maskrcnn_subject(backbone: nn.Module, batch: Batch) -> Subject:
    """torchvision's Mask R-CNN, default heads, on `backbone`, fed the batch without resizing."""
    images, targets = batch.images, batch.targets
    height, width = images.shape[-2:]
    rcnn = MaskRCNN(backbone, num_classes=len(batch.category_ids) + 1,
                    min_size=min(height, width), max_size=max(height, width))
    image_list = list(images)
    rcnn_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
    with torch.inference_mode():
        resized, _ = rcnn.transform(image_list)
    if any(tuple(size) != (height, width) for size in resized.image_sizes):
        raise RuntimeError(f"Mask R-CNN's transform resized the {height}x{width} inputs to {resized.image_sizes}")
    return Subject(rcnn, lambda: sum(rcnn(image_list, rcnn_targets).values()),
                   lambda: sum(len(p["scores"]) for p in rcnn(image_list)))


# --- matched widths: the coco profile against Mask R-CNN at the same depth ---

def matched_params(coco: dict, depth: int) -> dict:
    """The coco profile's effective parameters `coco`, untrained (no download), at ResNet `depth`."""
    cfg = copy.deepcopy(coco)
    cfg["model"]["backbone"]["pretrained"] = False
    cfg["model"]["backbone"]["depth"] = depth
    return cfg


def matched_subject(model: str, cfg: dict, batch: Batch) -> tuple[Subject, nn.Module]:
    """One subject of the matched comparison (a PEP variant or MASKRCNN) and its backbone + FPN."""
    images, targets = batch.images, batch.targets
    if model in VARIANTS:
        pep = build_model(cfg, model, batch.category_ids)
        return Subject(pep, lambda: sum(pep(images, targets).values()),
                       lambda: sum(len(p["scores"]) for p in pep(images, targets))), pep.features.body
    bb = cfg["model"]["backbone"]
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{bb['depth']}", weights=None,
                                   norm_layer=FrozenBatchNorm2d if bb["norm"] == "frozen_batch" else nn.BatchNorm2d,
                                   trainable_layers=bb["trainable_layers"])
    if backbone.out_channels != cfg["model"]["fpn_channels"]:
        raise RuntimeError(f"Mask R-CNN's FPN has {backbone.out_channels} channels, PEP's "
                           f"{cfg['model']['fpn_channels']}: not a matched comparison")
    return maskrcnn_subject(backbone, batch), backbone


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)
