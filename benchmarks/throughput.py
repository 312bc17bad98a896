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

Both comparisons time their models in the same rounds (one iteration of each per round, the
order rotated) and report the median round, its quartiles and the ratios' spread; each PEP
variant also gets a per-module breakdown (throughput_lib/breakdown.py: time per box of Fig. 2,
forward and backward). `--weights runs` times the demo's trained variants instead of fresh ones.

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

This file holds the command line and runs the comparisons; what it times, how it times them and
how it reports them live in the package beside it: throughput_lib/models.py (the subjects),
batches.py (their inputs), timing.py (the timers and the CPU others took) and report.py (the
summary, tables and log).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile

from pep.config import DEFAULT_PARAMS, load_params

# the package beside this file: on sys.path already when this file runs as a script, not when it
# is loaded by path (importlib.util.spec_from_file_location, as tests/test_benchmark.py does)
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from throughput_lib.batches import TINY_COCO, Batch, load_batch, load_matched_batch  # noqa: E402
from throughput_lib.models import MATCHED_PROFILE, MATCHED_VARIANT, MODELS, build_subject, matched_params  # noqa: E402
from throughput_lib.report import (cpu_name, format_breakdowns, format_matched, format_table, log,  # noqa: E402
                                   summarise, warn_if_busy)
from throughput_lib.timing import (MATCHED_MODELS, MatchedResult, OthersMeter, Result, measure_demo,  # noqa: E402
                                   measure_pair, ratio_spread, sgd, training_step)

WIDTHS = ("demo", "coco", "both")


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
    p.add_argument("--warmup", type=int, default=2, help="demo comparison: untimed rounds before timing (default 2)")
    p.add_argument("--iters", type=int, default=12,
                   help="demo comparison: timed rounds, one iteration of every model each, in turns (default 12)")
    p.add_argument("--weights", type=Path, default=None,
                   help="demo comparison: a runs/ folder (runs/<variant>/seed<N>/model_final.pt) whose trained PEP "
                        "variants to time, so that inference post-processes real detections (default: fresh "
                        "weights, which keep almost none)")
    p.add_argument("--weights-seed", type=int, default=0, help="the seed of the --weights models (default 0)")
    p.add_argument("--breakdown-iters", type=int, default=3,
                   help="profiled iterations of each PEP variant for the per-module breakdown (default 3; 0: none)")
    p.add_argument("--amp", choices=("auto", "off"), default="auto",
                   help="training under bfloat16 autocast where the CPU has native bf16, as `pep train` "
                        "(train.amp) does (auto, the default), or in full precision (off); inference is in "
                        "full precision, as `pep evaluate`")
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
                      help="timed rounds (default: 3, or --iters when that is smaller)")
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
    if args.iters < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1) or args.breakdown_iters < 0:
        p.error("need --iters >= 1, --warmup >= 0, --batch >= 1 and --breakdown-iters >= 0")
    if args.weights is not None and not args.weights.is_dir():
        p.error(f"--weights {args.weights}: no such folder (expected a runs/ folder of `pep train`)")
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


def amp_dtype(args: argparse.Namespace) -> torch.dtype | None:
    from pep.engine.train import autocast_dtype

    return autocast_dtype(args.amp == "auto", torch.device("cpu"))


def run_matched(args: argparse.Namespace) -> dict:
    coco = load_params(args.params, profile=MATCHED_PROFILE)
    cfg = matched_params(coco, args.coco_depths[0])
    batch, source = load_matched_batch(cfg, args)
    amp = amp_dtype(args)
    log(f"matched widths: batch {tuple(batch.images.shape)}, "
        f"{sum(len(t['labels']) for t in batch.targets)} instances, {torch.get_num_threads()} thread(s), "
        f"training in {amp or 'full precision'}")
    others = OthersMeter()
    results: list[MatchedResult] = []
    for depth in args.coco_depths:
        started = time.perf_counter()
        timed = measure_pair(coco, depth, batch, args, amp)
        results += timed
        gc.collect()  # drop this depth's models, graphs and buffers before building the next
        for r in timed:
            train = "not timed" if r.train_ms_per_img is None else f"{r.train_ms_per_img:.0f} ms/img"
            log(f"{r.label}: train {train}, infer {r.infer_ms_per_img:.0f} ms/img")
        log(f"R{depth}: {time.perf_counter() - started:.0f} s")
    m, bb = cfg["model"], cfg["model"]["backbone"]
    ratios, spreads = {}, {}
    for depth in args.coco_depths:
        base, pep, rcnn = (next(r for r in results if r.model == k and r.depth == depth) for k in MATCHED_MODELS)
        # PEP's images/s over Mask R-CNN's: > 1 means PEP is faster; against baseline, pep's time
        # per image over baseline's in inference (<= 1.1 is the target) and images/s in training
        pairs = {"train": (rcnn.train_ms_each, pep.train_ms_each), "infer": (rcnn.infer_ms_each, pep.infer_ms_each),
                 "pep_train_vs_baseline": (base.train_ms_each, pep.train_ms_each),
                 "pep_infer_time_vs_baseline": (pep.infer_ms_each, base.infer_ms_each)}
        spreads[f"R{depth}"] = {k: None if a is None else asdict(ratio_spread(a, b)) for k, (a, b) in pairs.items()}
        ratios[f"R{depth}"] = {k: None if v is None else v["median"] for k, v in spreads[f"R{depth}"].items()}
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
        "train_amp": str(amp) if amp else None,
        "depths": args.coco_depths,
        "train_depths": args.coco_train_depths,
        "other_processes_cpu_share": others.share(),
        "results": [{"name": r.label, **asdict(r),
                     "train_img_s": None if r.train_ms_per_img is None else 1000 / r.train_ms_per_img,
                     "infer_img_s": 1000 / r.infer_ms_per_img} for r in results],
        "ratios_pep_vs_maskrcnn": ratios,
        "ratio_spreads": spreads,
        "breakdowns": {r.model: {"train": r.train_breakdown, "infer": r.infer_breakdown}
                       for r in results if r.infer_breakdown is not None},
    }


def run_demo(args: argparse.Namespace) -> tuple[dict, dict[str, Result]]:
    cfg = load_params(args.params, profile=args.profile)
    batch = load_batch(cfg, args.data, args.batch or cfg["train"]["batch_size"])
    amp = amp_dtype(args)
    log(f"demo widths: batch {tuple(batch.images.shape)}, {sum(len(t['labels']) for t in batch.targets)} "
        f"instances, {torch.get_num_threads()} thread(s), training in {amp or 'full precision'}, "
        f"{'weights of ' + str(args.weights) if args.weights else 'fresh weights'}")
    others = OthersMeter()
    started = time.perf_counter()
    results = measure_demo(cfg, batch, args, amp)
    for name, r in results.items():
        log(f"{name}: train {r.train_img_s:.2f} img/s, infer {r.infer_img_s:.2f} img/s")
    log(f"demo comparison: {time.perf_counter() - started:.0f} s")
    summary = summarise(results, cfg, batch, args, others.share(), amp)
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
        parts.append(format_breakdowns("DEMO WIDTHS", summary["breakdowns"]))
    if matched is not None and matched["breakdowns"]:
        parts.append(format_breakdowns(f"MATCHED WIDTHS, R{args.coco_depths[0]}", matched["breakdowns"]))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
