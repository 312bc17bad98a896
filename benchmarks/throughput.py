"""Throughput of PEP's four variants against torchvision's Mask R-CNN and the bare backbone.

Measured in one process, on one fixed batch of the synthetic data set, for each of:

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
class 0 being its background).

Run from the project root:

    .venv/bin/python benchmarks/throughput.py                 # table and the three targets
    .venv/bin/python benchmarks/throughput.py --json          # one JSON object on stdout
    .venv/bin/python benchmarks/throughput.py --profile-model pep   # top ops of a training step

Progress goes to stderr. The defaults take about two minutes on two quiet CPU cores, most of
it in Mask R-CNN. Other processes on the machine distort the numbers far more than their share
of the CPU suggests (intra-op threads that wait on each other); the report says how much CPU
others took meanwhile, and `--threads 1` is the steadier choice on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
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

from pep.config import DEFAULT_PARAMS, VARIANTS, load_params
from pep.data.coco import CocoInstances, InputSize, collate
from pep.data.synth import generate
from pep.model import build_model
from pep.model.backbone import FeatureExtractor

MASKRCNN = "maskrcnn"
BACKBONE = "backbone"
MODELS = (*VARIANTS, MASKRCNN, BACKBONE)
SYNTH_IMAGES = 32  # generated when --data is not given; only the first --batch are used


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file")
    p.add_argument("--profile", default=None, help="params.yaml profile (default: the file's own)")
    p.add_argument("--data", type=Path, default=None,
                   help="COCO-layout folder to read the training split from, paths as in params "
                        "(default: generate a small synthetic set in a temporary folder)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: train.batch_size)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before timing (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model's initial weights")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    mode.add_argument("--profile-model", choices=MODELS, default=None,
                      help="only profile --iters training steps of this model (after --warmup)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        p.error("need --iters >= 1, --warmup >= 0 and --batch >= 1")
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
    height, width = images.shape[-2:]
    rcnn = MaskRCNN(feature_extractor(cfg).body, num_classes=len(batch.category_ids) + 1,
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


def format_table(summary: dict, results: dict[str, Result]) -> str:
    rcnn = results[MASKRCNN]
    h, w = summary["input_size"]
    lines = [f"PEP throughput, profile '{summary['profile']}': batch {summary['batch_size']} of {h}x{w} "
             f"images, {summary['threads']} thread(s) on {summary['cpu']}, torch {summary['torch']}, "
             f"{summary['warmup']} warm-up + {summary['iters']} timed iterations",
             f"other processes used {_percent(summary['other_processes_cpu_share'])} of the machine's CPU "
             "meanwhile",
             "",
             f"{'model':<10} {'train img/s':>11} {'infer img/s':>11} {'train/MRCNN':>11} {'infer/MRCNN':>11} "
             f"{'params (M)':>10} {'GFLOPs/img':>10} {'dets/img':>8}"]
    for name, r in results.items():
        dets = "-" if r.detections_per_image is None else f"{r.detections_per_image:.1f}"
        lines.append(f"{name:<10} {r.train_img_s:>11.2f} {r.infer_img_s:>11.2f} "
                     f"{r.train_img_s / rcnn.train_img_s:>10.2f}x {r.infer_img_s / rcnn.infer_img_s:>10.2f}x "
                     f"{r.params / 1e6:>10.2f} {r.flops_per_image / 1e9:>10.3f} {dets:>8}")
    lines += ["", f"{'target':<46} {'measured':>8}  result"]
    for t in summary["targets"]:
        lines.append(f"{t['name']:<46} {t['value']:>8.2f}  {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_params(args.params, profile=args.profile)
    batch = load_batch(cfg, args.data, args.batch or cfg["train"]["batch_size"])
    log(f"batch {tuple(batch.images.shape)}, {sum(len(t['labels']) for t in batch.targets)} instances, "
        f"{torch.get_num_threads()} thread(s)")
    if args.profile_model:
        print(run_profile(args.profile_model, cfg, batch, args))
        return 0
    others = OthersMeter()
    results: dict[str, Result] = {}
    for name in MODELS:
        started = time.perf_counter()
        results[name] = measure(name, cfg, batch, args)
        gc.collect()  # drop the last model's graph and buffers before timing the next
        log(f"{name}: train {results[name].train_img_s:.2f} img/s, infer {results[name].infer_img_s:.2f} img/s "
            f"({time.perf_counter() - started:.0f} s)")
    summary = summarise(results, cfg, batch, args, others.share())
    if (summary["other_processes_cpu_share"] or 0) > 0.05:
        log(f"other processes took {_percent(summary['other_processes_cpu_share'])} of the CPU during the "
            "run: the numbers may be low and the ratios skewed; rerun on a quiet machine")
    print(json.dumps(summary, indent=2) if args.json else format_table(summary, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
