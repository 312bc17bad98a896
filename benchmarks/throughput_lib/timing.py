"""How the throughput benchmark times its subjects, and how much CPU others took meanwhile.

- `training_step`: one timed training iteration (zero the gradients, forward with the summed
  losses, backward, an SGD-with-momentum step from `sgd`);
- `rounds_ms`: every subject's step timed in rounds, one call each per round, the order
  rotated from round to round: another process's burst then slows all of them alike, and no
  subject always runs right after the same neighbour;
- `Spread` and `ratio_spread`: the median and quartiles of a timing, or of a ratio of two
  subjects' timings taken round by round, and after how many rounds that ratio settled;
- `measure_demo`: the demo comparison, every model timed in the same rounds, then each PEP
  variant's per-module breakdown, its FLOPs and detections;
- `measure_pair`: the PEP variants and Mask R-CNN at one depth of the matched comparison;
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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pep.config import VARIANTS

from .batches import Batch
from .breakdown import profile_calls
from .models import MASKRCNN, MODELS, Subject, build_subject, count, matched_params, matched_subject

SETTLED_WITHIN = 0.05  # a ratio has settled when its running median stays this close to the final one
MATCHED_MODELS = ("baseline", "pep", MASKRCNN)


@dataclass
class Spread:
    """Median and quartiles of per-round values; `settled_after`: the rounds after which the
    running median stayed within SETTLED_WITHIN of the final one (ratios only)."""

    median: float
    q1: float
    q3: float
    rounds: int
    settled_after: int | None = None

    @classmethod
    def of(cls, values: list[float], settle: bool = False) -> "Spread":
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
        median = statistics.median(values)
        settled = None
        if settle:
            settled = len(values)
            for k in range(len(values), 0, -1):
                if abs(statistics.median(values[:k]) / median - 1) > SETTLED_WITHIN:
                    break
                settled = k
        return cls(median, q1, q3, len(values), settled)


def ratio_spread(numerator_ms: list[float], denominator_ms: list[float]) -> Spread:
    """numerator / denominator, round by round (both timed in the same rounds)."""
    return Spread.of([a / b for a, b in zip(numerator_ms, denominator_ms)], settle=True)


@dataclass
class Result:
    train_img_s: float  # from the median round
    infer_img_s: float
    train_ms_each: list[float]  # per image, one per round
    infer_ms_each: list[float]
    params: int
    flops_per_image: float
    detections_per_image: float | None
    train_breakdown: dict | None = None  # PEP variants: ms/image per scope (breakdown.Breakdown)
    infer_breakdown: dict | None = None


@dataclass
class MatchedResult:
    model: str  # a PEP variant or MASKRCNN
    depth: int
    train_ms_per_img: float | None  # None: training not timed at this depth
    infer_ms_per_img: float
    params: int
    trainable_params: int
    backbone_params: int  # ResNet + FPN alone
    flops_per_image: float
    detections_per_image: float
    train_ms_each: list[float] | None  # the timed rounds, per image
    infer_ms_each: list[float]
    train_breakdown: dict | None = None
    infer_breakdown: dict | None = None

    @property
    def label(self) -> str:
        return f"{'MaskRCNN' if self.model == MASKRCNN else 'PEP-' + self.model}-R{self.depth}"


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


def autocast(amp: torch.dtype | None, call: Callable[[], object]) -> Callable[[], object]:
    """`call` under CPU autocast to `amp` (None: as it is), as `pep train` runs its forward."""
    if amp is None:
        return call

    def under_autocast():
        with torch.autocast("cpu", dtype=amp):
            return call()
    return under_autocast


# --- timers ---

def rounds_ms(steps: list[Callable[[], object]], batch_size: int, warmup: int, rounds: int) -> list[list[float]]:
    """Per-image wall times in ms of each step, one per round, after `warmup` untimed rounds;
    round r starts with step r mod n."""
    for _ in range(warmup):  # first calls pay for allocation and one-time set-up
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    n = len(steps)
    for r in range(rounds):
        for i in (*range(r % n, n), *range(r % n)):
            started = time.perf_counter()
            steps[i]()
            times[i].append(1000 * (time.perf_counter() - started) / batch_size)
    return times


def _flops_and_detections(subject: Subject, images: int) -> tuple[float, float | None]:
    counter = FlopCounterMode(display=False)  # after timing: describes the inference timed
    with torch.no_grad(), counter:
        detections = subject.predict()
    return counter.get_total_flops() / images, None if detections is None else detections / images


def _load_trained(subject: Subject, name: str, weights: Path | None, seed: int) -> None:
    """A PEP variant's weights from `weights/<variant>/seed<seed>/model_final.pt`, where given."""
    if weights is None or name not in VARIANTS:
        return
    from pep.engine import checkpoint

    path = weights / name / f"seed{seed}" / checkpoint.FINAL
    if not path.is_file():
        raise SystemExit(f"{path}: no trained model of {name} (run `pep train --variant {name} --seed {seed}`, "
                         "or leave --weights out for fresh weights)")
    subject.model.load_state_dict(checkpoint.load(path)["model"])


# --- measurements ---

def measure_demo(cfg: dict, batch: Batch, args: argparse.Namespace, amp: torch.dtype | None) -> dict[str, Result]:
    """Every model of the demo comparison, timed in the same rounds (inference first, while
    trained weights are as loaded; then training), and each PEP variant's per-module breakdown."""
    subjects = {}
    for name in MODELS:
        torch.manual_seed(args.seed)
        subjects[name] = build_subject(name, cfg, batch)
        _load_trained(subjects[name], name, args.weights, args.weights_seed)
    b = len(batch.images)
    for s in subjects.values():
        s.model.eval()
    infer_calls = [torch.inference_mode()(s.predict) for s in subjects.values()]
    infer = rounds_ms(infer_calls, b, args.warmup, args.iters)
    counted = [_flops_and_detections(s, b) for s in subjects.values()]
    breakdowns: dict[str, dict] = {name: {} for name in subjects}
    for (name, s), call in zip(subjects.items(), infer_calls):
        if name in VARIANTS and args.breakdown_iters:
            breakdowns[name]["infer_breakdown"] = asdict(profile_calls(call, b, args.breakdown_iters))
    for s in subjects.values():
        s.model.train()
    train_steps = [autocast(amp, training_step(s, sgd(cfg, s.model))) for s in subjects.values()]
    train = rounds_ms(train_steps, b, args.warmup, args.iters)
    for (name, s), step in zip(subjects.items(), train_steps):
        if name in VARIANTS and args.breakdown_iters:
            breakdowns[name]["train_breakdown"] = asdict(profile_calls(step, b, args.breakdown_iters))
    return {name: Result(1000 / statistics.median(train[k]), 1000 / statistics.median(infer[k]), train[k], infer[k],
                         count(s.model.parameters()), *counted[k], **breakdowns[name])
            for k, (name, s) in enumerate(subjects.items())}


def measure_pair(coco: dict, depth: int, batch: Batch, args: argparse.Namespace,
                 amp: torch.dtype | None) -> list[MatchedResult]:
    """PEP's baseline and full variants and Mask R-CNN at ResNet `depth`, built side by side and
    timed in the same rounds; the PEP variants' breakdowns at the first depth."""
    cfg = matched_params(coco, depth)
    built = []
    for model in MATCHED_MODELS:
        torch.manual_seed(args.seed)
        built.append(matched_subject(model, cfg, batch))
    b = len(batch.images)
    timed_train = depth in args.coco_train_depths
    train: list[list[float] | None] = [None] * len(built)
    steps = [autocast(amp, training_step(s, sgd(cfg, s.model))) for s, _ in built]
    if timed_train:
        for subject, _ in built:
            subject.model.train()
        train = rounds_ms(steps, b, args.coco_warmup, args.coco_iters)
    for subject, _ in built:
        subject.model.eval()
    predicts = [torch.inference_mode()(s.predict) for s, _ in built]
    infer = rounds_ms(predicts, b, args.coco_warmup, args.coco_iters)
    results = []
    for k, (model, (subject, backbone)) in enumerate(zip(MATCHED_MODELS, built)):
        breakdowns: dict = {}
        if model != MASKRCNN and depth == args.coco_depths[0] and args.breakdown_iters:
            breakdowns["infer_breakdown"] = asdict(profile_calls(predicts[k], b, 1))
            if timed_train:
                subject.model.train()
                breakdowns["train_breakdown"] = asdict(profile_calls(steps[k], b, 1))
                subject.model.eval()
        flops, detections = _flops_and_detections(subject, b)
        params = list(subject.model.parameters())
        results.append(MatchedResult(
            model, depth, None if train[k] is None else statistics.median(train[k]), statistics.median(infer[k]),
            count(params), count(p for p in params if p.requires_grad), count(backbone.parameters()),
            flops, detections or 0.0, train[k], infer[k], **breakdowns))
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
