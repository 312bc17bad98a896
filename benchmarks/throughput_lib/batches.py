"""The images and targets of the throughput benchmark: one fixed batch per comparison.

Every model of a comparison sees the same batch: the demo comparison's comes from the synthetic
set (or `--data`) at the evaluation size, the matched one's from tiny_coco (or `--coco-data`, or
the synthetic set) at `--coco-size`, both zero-padded to a common, /32 size.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pep.config import PROJECT_ROOT
from pep.data.coco import CocoInstances, InputSize, collate
from pep.data.synth import generate

SYNTH_IMAGES = 32  # generated when --data is not given; only the first --batch are used
COCO_CLASSES = 80
TINY_COCO = PROJECT_ROOT.parent / "shared" / "data" / "tiny_coco"


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1], padded
    targets: list[dict]
    category_ids: list[int]


def load_batch(cfg: dict, data_dir: Path | None, batch_size: int) -> Batch:
    with tempfile.TemporaryDirectory(prefix="pep-bench-") as tmp:
        if data_dir is None:
            synth = copy.deepcopy(cfg["data"]["synth"])
            synth.update(num_train=max(SYNTH_IMAGES, batch_size), num_val=0, num_test_dev=0)
            data_dir = Path(tmp) / "synth"
            generate(synth, data_dir, progress=False)
        # eval sizing gives every run the same input size; train=True still drops
        # degenerate and empty instances, which Mask R-CNN's loss cannot take
        ds = CocoInstances(data_dir / cfg["data"]["train_annotations"], data_dir / cfg["data"]["train_images"],
                           InputSize.from_params(cfg["data"]["input"], train=False), train=True,
                           skip_empty=True)
        if len(ds) < batch_size:
            raise SystemExit(f"{ds.annotation_file}: {len(ds)} usable image(s), fewer than --batch {batch_size}")
        images, targets = collate([ds[i] for i in range(batch_size)], cfg["data"]["input"]["size_divisibility"])
    return Batch(images, targets, ds.category_ids)


def load_matched_batch(cfg: dict, args: argparse.Namespace) -> tuple[Batch, str]:
    """The matched comparison's images and where they came from."""
    size = InputSize((args.coco_size,), args.coco_max_size)
    with tempfile.TemporaryDirectory(prefix="pep-bench-") as tmp:
        data_dir = args.coco_data
        if data_dir is None and (TINY_COCO / "annotations" / "instances_train2017.json").is_file():
            data_dir = TINY_COCO
        if data_dir is None:
            synth = copy.deepcopy(cfg["data"]["synth"])
            synth.update(num_train=max(SYNTH_IMAGES, args.coco_batch), num_val=0, num_test_dev=0)
            data_dir = Path(tmp) / "synth"
            generate(synth, data_dir, progress=False)
            source = "the synthetic set (tiny_coco not found), upscaled"
        else:
            source = f"{data_dir.name} train2017"
        ds = CocoInstances(data_dir / "annotations" / "instances_train2017.json", data_dir / "train2017", size,
                           train=True, skip_empty=True)
        if len(ds) < args.coco_batch:
            raise SystemExit(f"{ds.annotation_file}: {len(ds)} usable image(s), fewer than --coco-batch "
                             f"{args.coco_batch}")
        images, targets = collate([ds[i] for i in range(args.coco_batch)], cfg["data"]["input"]["size_divisibility"])
    # COCO's 80 classes on both sides, whatever the data set uses of them
    category_ids = list(ds.category_ids)
    category_ids += [max(category_ids) + 1 + i for i in range(COCO_CLASSES - len(category_ids))]
    return Batch(images, targets, category_ids), source
