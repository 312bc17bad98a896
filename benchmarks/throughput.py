"""Throughput of PEP against torchvision's Mask R-CNN: at matched (paper) widths and at demo widths.

Two comparisons, chosen with `--widths coco|demo|both` (default both), each measured in one process:

**Matched widths (`coco`)**: the paper's widths, PEP against Mask R-CNN at the same depth and the
same 256-channel FPN, at a reduced input size a CPU can run:

- PEP (variant `pep`) built from the effective parameters of params.yaml's `coco` profile
  (`load_params(..., profile="coco")`: ResNet-101 + FPN of 256 channels, levels p2..p6 with grids
  40/36/24/16/12, heads of 4 convs x 256 channels, descriptor_dim 256, purify embed_dim 256), with
  `model.backbone.pretrained` switched off (nothing is downloaded) and, for the R50 row, only the
  depth changed to 50;
- torchvision's Mask R-CNN with its default heads (RPN, 2 x 1024 box head, 4 x 256 mask head) on
  `resnet_fpn_backbone('resnet50' / 'resnet101', weights=None)`: the 256-channel FPN that
  `maskrcnn_resnet50_fpn` builds, with the coco profile's backbone norm (frozen batch norm) and
  trainable stages (3) on both sides, as the paper and Mask R-CNN train from ImageNet weights;
- both with fresh weights, 80 COCO classes, on the same images: the first `--coco-batch` training
  images of tiny_coco (real COCO 2017 images, ../shared/data/tiny_coco; the synthetic set when it
  is missing, or `--coco-data`), shorter side `--coco-size` (default 320), the longer capped at
  `--coco-max-size` (default 1333/800 of it), zero-padded to a multiple of 32.

For each model: training (forward, summed losses, backward, SGD step) and inference (eval mode,
forward only, under `torch.inference_mode`) in ms/image (the median of the timed iterations, per
image; the two sides of a depth are built together and timed in turns, one iteration each, so that
another process's burst slows both) and images/s, the PEP / Mask R-CNN ratio at each depth (same run), parameter counts (all,
trainable, backbone + FPN alone: the last must agree between the two sides) and FLOPs per image.
`--coco-depths` and `--coco-train-depths` pick the depths (default 50 and 101 for both).

**Demo widths, not matched (`demo`)**: the file's own profile (default: ResNet-18, a 64-channel FPN,
one 64-channel conv per head) against Mask R-CNN's default heads on that backbone; its ratios are
not the paper's. Measured on one fixed batch of the synthetic data set, for each of:

- the PEP variants `baseline`, `excavate`, `purify` and `pep` (`pep.model.build_model`);
- torchvision's Mask R-CNN on the same ResNet + FPN backbone (fresh weights, default heads);
- the backbone + FPN alone (`pep.model.backbone.FeatureExtractor`).

For each: training images/s (forward, summed losses, backward, SGD-with-momentum step; the
backbone alone uses the sum of each FPN level's mean as its loss), inference images/s (eval
mode under `torch.inference_mode`), parameter count, and FLOPs per image counted by
`torch.utils.flop_counter.FlopCounterMode` on one eval-mode forward of the batch (convolutions
and matrix products; torchvision's RoIAlign and NMS are not counted). `dets/img` is how many
detections that forward returned: with untrained weights the post-processing work (and so the
inference speed) of a detector depends on it.

Every model sees the same images: the first `--batch` training images, resized as in evaluation
(shorter side `data.input.test_min_size`, capped at `max_size`, no flip) and zero-padded to a
common size. Mask R-CNN gets them as a list with min_size/max_size equal to that size, so its
transform does not resize them, and the same instances as targets (labels shifted to 1..C,
class 0 being its background). The matched comparison feeds its images the same way.

Run from the project root:

    .venv/bin/python benchmarks/throughput.py                 # both comparisons
    .venv/bin/python benchmarks/throughput.py --widths coco   # matched widths only
    .venv/bin/python benchmarks/throughput.py --json          # one JSON object on stdout
    .venv/bin/python benchmarks/throughput.py --profile-model pep   # top ops of a demo training step

Progress goes to stderr. On two quiet CPU cores the matched comparison takes about a minute and a
half, the demo one about two minutes, most of it in Mask R-CNN. `--threads` sets torch's threads
(default: every core this process may use). Other processes on the machine distort the numbers
far more than their share of the CPU suggests (intra-op threads that wait on each other); the
report says how much CPU others took meanwhile, and `--threads 1` is the steadier choice on a
shared machine.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from pep.config import DEFAULT_PARAMS, PROJECT_ROOT, VARIANTS, load_params
from pep.data.coco import CocoInstances, InputSize, collate
from pep.data.synth import generate
from pep.model import build_model
from pep.model.backbone import FeatureExtractor

MASKRCNN = "maskrcnn"
BACKBONE = "backbone"
MODELS = (*VARIANTS, MASKRCNN, BACKBONE)
SYNTH_IMAGES = 32  # generated when --data is not given; only the first --batch are used
WIDTHS = ("demo", "coco", "both")
MATCHED_PROFILE = "coco"  # the params.yaml profile that holds the paper's widths
MATCHED_VARIANT = "pep"
COCO_CLASSES = 80
TINY_COCO = PROJECT_ROOT.parent / "shared" / "data" / "tiny_coco"
DEMO_LABEL = "DEMO WIDTHS (NOT MATCHED)"


@dataclass(frozen=True)
class Target:
    """One speed target: `value` of `ratio` must be `op` `threshold`."""

    name: str
    ratio: str
    op: str  # ">=" or "<="
    threshold: float

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


TARGETS = (
    Target("PEP training >= 2.0x Mask R-CNN", "pep_train_vs_maskrcnn", ">=", 2.0),
    Target("PEP inference >= 2.5x Mask R-CNN", "pep_infer_vs_maskrcnn", ">=", 2.5),
    Target("PEP training step <= 1.5x backbone+FPN step", "pep_train_step_vs_backbone", "<=", 1.5),
)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1], padded
    targets: list[dict]
    category_ids: list[int]


@dataclass
class Subject:
    """A model and how to run one training forward and one inference forward of the batch."""

    model: nn.Module
    loss: Callable[[], torch.Tensor]
    predict: Callable[[], int | None]  # detections in the batch; None for the bare backbone


@dataclass
class Result:
    train_img_s: float
    infer_img_s: float
    params: int
    flops_per_image: float
    detections_per_image: float | None


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def depth_list(text: str) -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ResNet depths, got {text!r}") from None
    if not depths or any(d not in (18, 34, 50, 101, 152) for d in depths):
        raise argparse.ArgumentTypeError(f"expected depths among 18,34,50,101,152, got {text!r}")
    return list(dict.fromkeys(depths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", choices=WIDTHS, default="both",
                   help="which comparison runs: coco = PEP at the paper's widths (params.yaml's coco "
                        "profile) against Mask R-CNN at the same depth; demo = the file's own profile "
                        "(64 channels by default) against Mask R-CNN's default heads, not matched; "
                        "both (default)")
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file")
    p.add_argument("--profile", default=None,
                   help="params.yaml profile of the demo comparison (default: the file's own); "
                        "the matched one always reads the coco profile")
    p.add_argument("--data", type=Path, default=None,
                   help="demo comparison: COCO-layout folder to read the training split from, paths as in "
                        "params (default: generate a small synthetic set in a temporary folder)")
    p.add_argument("--batch", type=int, default=None, help="demo comparison: images per step (default: train.batch_size)")
    p.add_argument("--warmup", type=int, default=2, help="demo comparison: untimed iterations before timing (default 2)")
    p.add_argument("--iters", type=int, default=10, help="demo comparison: timed iterations (default 10)")
    p.add_argument("--threads", type=int, default=all_cores(),
                   help=f"torch.set_num_threads (default: all cores, here {all_cores()})")
    p.add_argument("--seed", type=int, default=0, help="seed of every model's initial weights")
    coco = p.add_argument_group("matched comparison (--widths coco or both)")
    coco.add_argument("--coco-data", type=Path, default=None,
                      help="COCO-layout folder (annotations/instances_train2017.json, train2017/) to "
                           f"take the images from (default: {TINY_COCO} if it is there, else the "
                           "synthetic set)")
    coco.add_argument("--coco-size", type=int, default=320, help="shorter side of the images (default 320)")
    coco.add_argument("--coco-max-size", type=int, default=None,
                      help="cap on the longer side (default: 1333/800 of --coco-size, as COCO's 800/1333)")
    coco.add_argument("--coco-batch", type=int, default=1, help="images per step (default 1)")
    coco.add_argument("--coco-warmup", type=int, default=None,
                      help="untimed iterations (default: 1, or --warmup when that is smaller)")
    coco.add_argument("--coco-iters", type=int, default=None,
                      help="timed iterations (default: 3, or --iters when that is smaller)")
    coco.add_argument("--coco-depths", type=depth_list, default=[50, 101],
                      help="ResNet depths to compare, both sides the same (default 50,101)")
    coco.add_argument("--coco-train-depths", type=depth_list, default=None,
                      help="of those, the depths whose training is timed too (default: all of them); "
                           "the others are timed in inference only")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    mode.add_argument("--profile-model", choices=MODELS, default=None,
                      help="only profile --iters training steps of this model of the demo comparison "
                           "(after --warmup; --widths is ignored)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        p.error("need --iters >= 1, --warmup >= 0 and --batch >= 1")
    if args.threads < 1:
        p.error("need --threads >= 1")
    args.coco_warmup = min(1, args.warmup) if args.coco_warmup is None else args.coco_warmup
    args.coco_iters = min(3, args.iters) if args.coco_iters is None else args.coco_iters
    args.coco_max_size = args.coco_max_size or round(args.coco_size * 1333 / 800)
    if args.coco_train_depths is None:
        args.coco_train_depths = list(args.coco_depths)
    if args.coco_iters < 1 or args.coco_warmup < 0 or args.coco_batch < 1:
        p.error("need --coco-iters >= 1, --coco-warmup >= 0 and --coco-batch >= 1")
    if args.coco_size < 32 or args.coco_max_size < args.coco_size:
        p.error("need --coco-size >= 32 and --coco-max-size >= --coco-size")
    if not set(args.coco_train_depths) <= set(args.coco_depths):
        p.error("--coco-train-depths must be among --coco-depths")
    return args


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


# --- data ---

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


# --- models ---

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


def sgd(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg["train"]["lr"],
                           momentum=cfg["train"]["momentum"], weight_decay=cfg["train"]["weight_decay"])


def training_step(subject: Subject, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        subject.loss().backward()
        optimizer.step()
    return step


def images_per_second(step: Callable[[], object], batch_size: int, warmup: int, iters: int) -> float:
    for _ in range(warmup):  # first calls pay for allocation and one-time set-up
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch_size * iters / (time.perf_counter() - start)


def measure(name: str, cfg: dict, batch: Batch, args: argparse.Namespace) -> Result:
    torch.manual_seed(args.seed)
    subject = build_subject(name, cfg, batch)
    b = len(batch.images)
    subject.model.train()
    train = images_per_second(training_step(subject, sgd(cfg, subject.model)), b, args.warmup, args.iters)
    subject.model.eval()
    with torch.inference_mode():
        infer = images_per_second(subject.predict, b, args.warmup, args.iters)
    # counted after timing, so that FLOPs and detections describe the inference that was timed
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        detections = subject.predict()
    return Result(train, infer, sum(p.numel() for p in subject.model.parameters()),
                  counter.get_total_flops() / b, None if detections is None else detections / b)


def run_profile(name: str, cfg: dict, batch: Batch, args: argparse.Namespace) -> str:
    torch.manual_seed(args.seed)
    subject = build_subject(name, cfg, batch)
    subject.model.train()
    step = training_step(subject, sgd(cfg, subject.model))
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.iters):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# --- matched widths: the coco profile against Mask R-CNN at the same depth ---

@dataclass
class MatchedResult:
    model: str  # "pep" or MASKRCNN
    depth: int
    train_ms_per_img: float | None  # None: training not timed at this depth
    infer_ms_per_img: float
    params: int
    trainable_params: int
    backbone_params: int  # ResNet + FPN alone
    flops_per_image: float
    detections_per_image: float
    train_ms_each: list[float] | None  # the timed iterations, per image
    infer_ms_each: list[float]

    @property
    def label(self) -> str:
        return f"{'PEP' if self.model == MATCHED_VARIANT else 'MaskRCNN'}-R{self.depth}"


def matched_params(coco: dict, depth: int) -> dict:
    """The coco profile's effective parameters `coco`, untrained (no download), at ResNet `depth`."""
    cfg = copy.deepcopy(coco)
    cfg["model"]["backbone"]["pretrained"] = False
    cfg["model"]["backbone"]["depth"] = depth
    return cfg


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


def matched_subject(model: str, cfg: dict, batch: Batch) -> tuple[Subject, nn.Module]:
    """One side of the matched comparison and its backbone + FPN."""
    images, targets = batch.images, batch.targets
    if model == MATCHED_VARIANT:
        pep = build_model(cfg, MATCHED_VARIANT, batch.category_ids)
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


def interleaved_ms(steps: list[Callable[[], object]], batch_size: int, warmup: int, iters: int) -> list[list[float]]:
    """Per-image wall times in ms of each step, `iters` each after `warmup`, run in turns (A, B,
    A, B, ...): on a shared machine another process's burst then slows both sides alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for step, out in zip(steps, times):
            started = time.perf_counter()
            step()
            out.append(1000 * (time.perf_counter() - started) / batch_size)
    return times


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def measure_pair(coco: dict, depth: int, batch: Batch, args: argparse.Namespace) -> list[MatchedResult]:
    """PEP and Mask R-CNN at ResNet `depth`, built side by side and timed in turns."""
    cfg = matched_params(coco, depth)
    models = (MATCHED_VARIANT, MASKRCNN)
    built = []
    for model in models:
        torch.manual_seed(args.seed)
        built.append(matched_subject(model, cfg, batch))
    b = len(batch.images)
    train: list[list[float] | None] = [None, None]
    if depth in args.coco_train_depths:
        for subject, _ in built:
            subject.model.train()
        train = interleaved_ms([training_step(s, sgd(cfg, s.model)) for s, _ in built], b,
                               args.coco_warmup, args.coco_iters)
    for subject, _ in built:
        subject.model.eval()
    with torch.inference_mode():
        infer = interleaved_ms([s.predict for s, _ in built], b, args.coco_warmup, args.coco_iters)
    results = []
    for k, (model, (subject, backbone)) in enumerate(zip(models, built)):
        counter = FlopCounterMode(display=False)  # after timing: describes the inference timed
        with torch.no_grad(), counter:
            detections = subject.predict()
        params = list(subject.model.parameters())
        results.append(MatchedResult(
            model, depth, None if train[k] is None else statistics.median(train[k]), statistics.median(infer[k]),
            count(params), count(p for p in params if p.requires_grad), count(backbone.parameters()),
            counter.get_total_flops() / b, detections / b, train[k], infer[k]))
    return results


def run_matched(args: argparse.Namespace) -> dict:
    coco = load_params(args.params, profile=MATCHED_PROFILE)
    cfg = matched_params(coco, args.coco_depths[0])
    batch, source = load_matched_batch(cfg, args)
    log(f"matched widths: batch {tuple(batch.images.shape)}, "
        f"{sum(len(t['labels']) for t in batch.targets)} instances, {torch.get_num_threads()} thread(s)")
    others = OthersMeter()
    results: list[MatchedResult] = []
    for depth in args.coco_depths:
        started = time.perf_counter()
        pair = measure_pair(coco, depth, batch, args)
        results += pair
        gc.collect()  # drop this depth's models, graphs and buffers before building the next
        for r in pair:
            train = "not timed" if r.train_ms_per_img is None else f"{r.train_ms_per_img:.0f} ms/img"
            log(f"{r.label}: train {train}, infer {r.infer_ms_per_img:.0f} ms/img")
        log(f"R{depth} pair: {time.perf_counter() - started:.0f} s")
    m, bb = cfg["model"], cfg["model"]["backbone"]
    ratios = {}
    for depth in args.coco_depths:
        pep, rcnn = (next(r for r in results if r.model == k and r.depth == depth) for k in (MATCHED_VARIANT, MASKRCNN))
        ratios[f"R{depth}"] = {  # PEP's images/s over Mask R-CNN's: > 1 means PEP is faster
            "train": None if pep.train_ms_per_img is None else rcnn.train_ms_per_img / pep.train_ms_per_img,
            "infer": rcnn.infer_ms_per_img / pep.infer_ms_per_img,
        }
    return {
        "profile": MATCHED_PROFILE,
        "pep_variant": MATCHED_VARIANT,
        "widths": {"fpn_channels": m["fpn_channels"], "levels": m["levels"]["features"],
                   "grids": m["levels"]["grids"], "head_convs": m["head"]["convs"],
                   "head_channels": m["head"]["channels"], "descriptor_dim": m["descriptor_dim"],
                   "purify_embed_dim": m["purify"]["embed_dim"]},
        "backbone": {"pretrained": False, "norm": bb["norm"], "trainable_layers": bb["trainable_layers"]},
        "maskrcnn": "torchvision MaskRCNN(resnet_fpn_backbone('resnet" + "'/'resnet".join(map(str, args.coco_depths))
                    + "', weights=None)), default heads",
        "data": source,
        "num_classes": len(batch.category_ids),
        "instances": sum(len(t["labels"]) for t in batch.targets),
        "batch_size": len(batch.images),
        "input_size": list(batch.images.shape[-2:]),
        "min_size": args.coco_size,
        "max_size": args.coco_max_size,
        "warmup": args.coco_warmup,
        "iters": args.coco_iters,
        "depths": args.coco_depths,
        "train_depths": args.coco_train_depths,
        "other_processes_cpu_share": others.share(),
        "results": [{"name": r.label, **asdict(r),
                     "train_img_s": None if r.train_ms_per_img is None else 1000 / r.train_ms_per_img,
                     "infer_img_s": 1000 / r.infer_ms_per_img} for r in results],
        "ratios_pep_vs_maskrcnn": ratios,
    }


def format_matched(matched: dict, threads: int, cpu: str) -> str:
    w, bb = matched["widths"], matched["backbone"]
    h, wd = matched["input_size"]
    depths = "/".join(f"R{d}" for d in matched["depths"])
    lines = [
        f"MATCHED WIDTHS (profile '{matched['profile']}'): PEP ({matched['pep_variant']}) vs Mask R-CNN, "
        f"ResNet-{'/'.join(str(d) for d in matched['depths'])}-FPN on both sides",
        f"  PEP: fpn {w['fpn_channels']} ch, levels {w['levels'][0]}..{w['levels'][-1]} grids {w['grids']}, "
        f"heads {w['head_convs']} x {w['head_channels']} ch, descriptor_dim {w['descriptor_dim']}, "
        f"purify embed_dim {w['purify_embed_dim']}",
        f"  Mask R-CNN: {matched['maskrcnn']} (RPN, 2 x 1024 box head, 4 x 256 mask head), fpn 256 ch",
        f"  both: fresh weights (pretrained off), {bb['norm']} norm, {bb['trainable_layers']} trainable "
        f"backbone stages, {matched['num_classes']} classes",
        f"  input: batch {matched['batch_size']} of {h}x{wd} (shorter side {matched['min_size']}, "
        f"max {matched['max_size']}, padded to /32) from {matched['data']}, {matched['instances']} instance(s)",
        f"  {threads} thread(s) on {cpu}, torch {torch.__version__}, {matched['warmup']} warm-up + "
        f"{matched['iters']} timed iterations per mode, PEP and Mask R-CNN in turns; ms/img = median iteration / batch",
        f"  other processes used {_percent(matched['other_processes_cpu_share'])} of the machine's CPU meanwhile",
        "",
        f"{'model':<14} {'train ms/img':>12} {'train img/s':>11} {'infer ms/img':>12} {'infer img/s':>11} "
        f"{'params (M)':>10} {'trainable (M)':>13} {'bb+FPN (M)':>10} {'GFLOPs/img':>10} {'dets/img':>8}",
    ]
    for r in matched["results"]:
        train_ms = "-" if r["train_ms_per_img"] is None else f"{r['train_ms_per_img']:.0f}"
        train_s = "-" if r["train_img_s"] is None else f"{r['train_img_s']:.3f}"
        lines.append(f"{r['name']:<14} {train_ms:>12} {train_s:>11} {r['infer_ms_per_img']:>12.0f} "
                     f"{r['infer_img_s']:>11.3f} {r['params'] / 1e6:>10.2f} {r['trainable_params'] / 1e6:>13.2f} "
                     f"{r['backbone_params'] / 1e6:>10.2f} {r['flops_per_image'] / 1e9:>10.2f} "
                     f"{r['detections_per_image']:>8.1f}")
    lines += ["", f"{'PEP / Mask R-CNN (img/s, same run)':<36} {'train':>7} {'infer':>7}"]
    for depth, ratio in matched["ratios_pep_vs_maskrcnn"].items():
        train = "  n/a" if ratio["train"] is None else f"{ratio['train']:.2f}x"
        lines.append(f"{'ResNet-' + depth[1:] + '-FPN':<36} {train:>7} {ratio['infer']:>6.2f}x")
    skipped = [d for d in matched["depths"] if d not in matched["train_depths"]]
    if skipped:
        lines.append(f"training not timed at {', '.join(f'R{d}' for d in skipped)} (--coco-train-depths "
                     f"{','.join(str(d) for d in matched['train_depths'])}): inference only there")
    lines.append(f"({depths}: above 1x PEP is the faster)")
    return "\n".join(lines)


# --- report ---

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cpu_seconds() -> float | None:
    """CPU time used by everything on the machine since boot (Linux; None elsewhere)."""
    try:
        ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """Share of the machine's CPU that other processes took while we timed: others' runs (tests,
    training) on a shared machine slow every number down, and this says whether that happened."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.perf_counter(), busy_cpu_seconds(), time.process_time()

    def share(self) -> float | None:
        busy = busy_cpu_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (time.process_time() - self.own)
        return max(0.0, others / ((time.perf_counter() - self.wall) * (os.cpu_count() or 1)))


def _percent(share: float | None) -> str:
    return "an unknown share" if share is None else f"{100 * share:.0f}%"


def summarise(results: dict[str, Result], cfg: dict, batch: Batch, args: argparse.Namespace,
              others_share: float | None) -> dict:
    pep, rcnn, bb = results["pep"], results[MASKRCNN], results[BACKBONE]
    ratios = {
        "pep_train_vs_maskrcnn": pep.train_img_s / rcnn.train_img_s,
        "pep_infer_vs_maskrcnn": pep.infer_img_s / rcnn.infer_img_s,
        # images/s are per step of the same batch, so this is PEP's step time over the backbone's
        "pep_train_step_vs_backbone": bb.train_img_s / pep.train_img_s,
    }
    out: dict = {
        "device": "cpu",
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "other_processes_cpu_share": others_share,
        "profile": cfg["profile"],
        "widths_matched": False,
        "widths_note": demo_widths(cfg),
        "batch_size": len(batch.images),
        "input_size": list(batch.images.shape[-2:]),
        "warmup": args.warmup,
        "iters": args.iters,
    }
    for name, r in results.items():
        out[f"{name}_train_img_s"] = r.train_img_s
        out[f"{name}_infer_img_s"] = r.infer_img_s
    out["pep_params"] = pep.params
    out["pep_flops_per_image"] = pep.flops_per_image
    out["variants"] = {v: asdict(results[v]) for v in VARIANTS}
    out[MASKRCNN] = asdict(rcnn)
    out[BACKBONE] = asdict(bb)
    out["ratios"] = ratios
    out["targets"] = [{"name": t.name, "ratio": t.ratio, "value": ratios[t.ratio], "op": t.op,
                       "threshold": t.threshold, "pass": t.passes(ratios[t.ratio])} for t in TARGETS]
    out["all_targets_pass"] = all(t["pass"] for t in out["targets"])
    return out


def demo_widths(cfg: dict) -> str:
    m = cfg["model"]
    return (f"{DEMO_LABEL.lower()}: PEP at ResNet-{m['backbone']['depth']}, fpn {m['fpn_channels']} ch, heads "
            f"{m['head']['convs']} x {m['head']['channels']} ch, descriptor_dim {m['descriptor_dim']}, against "
            f"Mask R-CNN's default heads (2 x 1024 box head, 4 x 256 mask head) on the same backbone: "
            "its ratios are not the paper's; see the matched comparison (--widths coco)")


def format_table(summary: dict, results: dict[str, Result]) -> str:
    rcnn = results[MASKRCNN]
    h, w = summary["input_size"]
    lines = [f"{DEMO_LABEL}, profile '{summary['profile']}': PEP variants vs Mask R-CNN",
             f"  {summary['widths_note']}",
             f"  batch {summary['batch_size']} of {h}x{w} synthetic images, {summary['threads']} thread(s) on "
             f"{summary['cpu']}, torch {summary['torch']}, {summary['warmup']} warm-up + {summary['iters']} timed "
             "iterations",
             f"  other processes used {_percent(summary['other_processes_cpu_share'])} of the machine's CPU "
             "meanwhile",
             "",
             f"{'model':<10} {'train img/s':>11} {'infer img/s':>11} {'train/MRCNN':>11} {'infer/MRCNN':>11} "
             f"{'params (M)':>10} {'GFLOPs/img':>10} {'dets/img':>8}"]
    for name, r in results.items():
        dets = "-" if r.detections_per_image is None else f"{r.detections_per_image:.1f}"
        lines.append(f"{name:<10} {r.train_img_s:>11.2f} {r.infer_img_s:>11.2f} "
                     f"{r.train_img_s / rcnn.train_img_s:>10.2f}x {r.infer_img_s / rcnn.infer_img_s:>10.2f}x "
                     f"{r.params / 1e6:>10.2f} {r.flops_per_image / 1e9:>10.3f} {dets:>8}")
    lines += ["", f"{'target (demo widths, not matched)':<46} {'measured':>8}  result"]
    for t in summary["targets"]:
        lines.append(f"{t['name']:<46} {t['value']:>8.2f}  {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)


def warn_if_busy(share: float | None, what: str) -> None:
    if (share or 0) > 0.05:
        log(f"other processes took {_percent(share)} of the CPU during the {what}: the numbers may be low "
            "and the ratios skewed; rerun on a quiet machine")


def run_demo(args: argparse.Namespace) -> tuple[dict, dict[str, Result]]:
    cfg = load_params(args.params, profile=args.profile)
    batch = load_batch(cfg, args.data, args.batch or cfg["train"]["batch_size"])
    log(f"demo widths: batch {tuple(batch.images.shape)}, {sum(len(t['labels']) for t in batch.targets)} "
        f"instances, {torch.get_num_threads()} thread(s)")
    others = OthersMeter()
    results: dict[str, Result] = {}
    for name in MODELS:
        started = time.perf_counter()
        results[name] = measure(name, cfg, batch, args)
        gc.collect()  # drop the last model's graph and buffers before timing the next
        log(f"{name}: train {results[name].train_img_s:.2f} img/s, infer {results[name].infer_img_s:.2f} img/s "
            f"({time.perf_counter() - started:.0f} s)")
    summary = summarise(results, cfg, batch, args, others.share())
    warn_if_busy(summary["other_processes_cpu_share"], "demo comparison")
    return summary, results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile_model:
        cfg = load_params(args.params, profile=args.profile)
        batch = load_batch(cfg, args.data, args.batch or cfg["train"]["batch_size"])
        log(f"batch {tuple(batch.images.shape)}, {sum(len(t['labels']) for t in batch.targets)} instances, "
            f"{torch.get_num_threads()} thread(s)")
        print(run_profile(args.profile_model, cfg, batch, args))
        return 0
    matched = None
    if args.widths in ("coco", "both"):
        matched = run_matched(args)
        warn_if_busy(matched["other_processes_cpu_share"], "matched comparison")
    summary, results = run_demo(args) if args.widths in ("demo", "both") else (None, None)
    if args.json:
        # the demo's keys stay at the top level, as before; the matched comparison is one key
        out = summary if summary is not None else {
            "device": "cpu", "cpu": cpu_name(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "threads": torch.get_num_threads()}
        out = {"widths": args.widths, **out}
        if matched is not None:
            out["matched_coco"] = matched
        print(json.dumps(out, indent=2))
        return 0
    parts = []
    if matched is not None:
        parts.append(format_matched(matched, torch.get_num_threads(), cpu_name()))
    if summary is not None:
        parts.append(format_table(summary, results))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
