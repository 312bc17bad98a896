"""How the throughput benchmark times its subjects, and how much CPU others took meanwhile.

- `training_step`: one timed training iteration (zero the gradients, forward with the summed
  losses, backward, an SGD-with-momentum step from `sgd`);
- `images_per_second`: `warmup` untimed calls, then the mean rate of `iters` timed calls;
- `interleaved_ms`: several steps timed in turns (A, B, A, B, ...), per-image ms of each call;
- `measure`: one demo-comparison model, training then inference, then its FLOPs and detections;
- `measure_pair`: PEP and Mask R-CNN at one depth of the matched comparison, timed in turns;
- `OthersMeter`: the share of the machine's CPU that other processes used while we timed.

FLOPs and detections are counted after timing (`torch.utils.flop_counter.FlopCounterMode`, one
eval-mode forward), so that they describe the inference that was timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .batches import Batch
from .models import MASKRCNN, MATCHED_VARIANT, Subject, build_subject, count, matched_params, matched_subject


@dataclass
class Result:
    train_img_s: float
    infer_img_s: float
    params: int
    flops_per_image: float
    detections_per_image: float | None


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


# --- what one iteration is ---

def sgd(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg["train"]["lr"],
                           momentum=cfg["train"]["momentum"], weight_decay=cfg["train"]["weight_decay"])


def training_step(subject: Subject, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        subject.loss().backward()
        optimizer.step()
    return step


# --- timers ---

def images_per_second(step: Callable[[], object], batch_size: int, warmup: int, iters: int) -> float:
    for _ in range(warmup):  # first calls pay for allocation and one-time set-up
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch_size * iters / (time.perf_counter() - start)


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


# --- measurements ---

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


# --- other processes ---

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
