"""What the throughput benchmark reports: the summary, its tables, its warnings and its log.

- `summarise`: the demo comparison's results as one JSON-ready dict, with its ratios (medians of
  the round-by-round ratios, their quartiles and after how many rounds they settled) and
  whether each speed target (`TARGETS`; at both widths `MODULE_TARGETS`) passes;
- `format_table` / `format_matched`: the text tables of the demo and matched comparisons;
- `format_breakdowns`: each PEP variant's time per box of Fig. 2, training and inference;
- `warn_if_busy`: a warning on stderr when other processes took a noticeable share of the CPU;
- `log`: progress lines on stderr; `cpu_name`: the processor the numbers were taken on.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision

from pep.config import VARIANTS

from .batches import Batch
from pep.model.scopes import SCOPES

from .breakdown import OPTIMIZER, OTHER, Breakdown
from .models import BACKBONE, MASKRCNN
from .timing import Result, Spread, ratio_spread

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


# the modules' cost: pep against baseline on the same data, at both widths
MODULE_TARGETS = (
    Target("pep training >= 0.8x baseline's img/s", "pep_train_vs_baseline", ">=", 0.8),
    Target("pep inference <= 1.1x baseline's ms/img", "pep_infer_time_vs_baseline", "<=", 1.1),
)
TARGETS = (
    Target("PEP training >= 2.0x Mask R-CNN", "pep_train_vs_maskrcnn", ">=", 2.0),
    Target("PEP inference >= 2.5x Mask R-CNN", "pep_infer_vs_maskrcnn", ">=", 2.5),
    Target("PEP training step <= 1.5x backbone+FPN step", "pep_train_step_vs_backbone", "<=", 1.5),
    *MODULE_TARGETS,
)


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _percent(share: float | None) -> str:
    return "an unknown share" if share is None else f"{100 * share:.0f}%"


def warn_if_busy(share: float | None, what: str) -> None:
    if (share or 0) > 0.05:
        log(f"other processes took {_percent(share)} of the CPU during the {what}: the numbers may be low "
            "and the ratios skewed; rerun on a quiet machine")


# --- demo widths ---

def summarise(results: dict[str, Result], cfg: dict, batch: Batch, args: argparse.Namespace,
              others_share: float | None, amp) -> dict:
    pep, base, rcnn, bb = results["pep"], results["baseline"], results[MASKRCNN], results[BACKBONE]
    # each ratio round by round (the models ran in the same rounds), then its median
    spreads = {
        "pep_train_vs_maskrcnn": ratio_spread(rcnn.train_ms_each, pep.train_ms_each),  # img/s over img/s
        "pep_infer_vs_maskrcnn": ratio_spread(rcnn.infer_ms_each, pep.infer_ms_each),
        "pep_train_step_vs_backbone": ratio_spread(pep.train_ms_each, bb.train_ms_each),  # step over step
        "pep_train_vs_baseline": ratio_spread(base.train_ms_each, pep.train_ms_each),
        "pep_infer_time_vs_baseline": ratio_spread(pep.infer_ms_each, base.infer_ms_each),
    }
    ratios = {k: v.median for k, v in spreads.items()}
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
        "train_amp": str(amp) if amp else None,
        "weights": str(args.weights) if args.weights else None,
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
    out["ratio_spreads"] = {k: asdict(v) for k, v in spreads.items()}
    out["breakdowns"] = {v: {"train": results[v].train_breakdown, "infer": results[v].infer_breakdown}
                         for v in VARIANTS if results[v].infer_breakdown is not None}
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


def _rounds_text(ms_each: list[float]) -> str:
    spread = Spread.of(ms_each)
    return f"{spread.q1:.1f}-{spread.q3:.1f}"


def format_table(summary: dict, results: dict[str, Result]) -> str:
    rcnn = results[MASKRCNN]
    h, w = summary["input_size"]
    weights = f"trained weights from {summary['weights']}" if summary["weights"] else \
        "fresh weights (inference keeps almost no detections: pass --weights runs for trained ones)"
    lines = [f"{DEMO_LABEL}, profile '{summary['profile']}': PEP variants vs Mask R-CNN",
             f"  {summary['widths_note']}",
             f"  batch {summary['batch_size']} of {h}x{w} synthetic images, {summary['threads']} thread(s) on "
             f"{summary['cpu']}, torch {summary['torch']}, {summary['warmup']} warm-up + {summary['iters']} timed "
             "rounds (every model one iteration per round, in turns); the median round",
             f"  training in {summary['train_amp'] or 'full precision'}, inference in full precision; the PEP "
             f"variants with {weights}",
             f"  other processes used {_percent(summary['other_processes_cpu_share'])} of the machine's CPU "
             "meanwhile",
             "",
             f"{'model':<10} {'train img/s':>11} {'ms/img q1-q3':>13} {'infer img/s':>11} {'ms/img q1-q3':>13} "
             f"{'train/MRCNN':>11} {'infer/MRCNN':>11} {'params (M)':>10} {'GFLOPs/img':>10} {'dets/img':>8}"]
    for name, r in results.items():
        dets = "-" if r.detections_per_image is None else f"{r.detections_per_image:.1f}"
        lines.append(f"{name:<10} {r.train_img_s:>11.2f} {_rounds_text(r.train_ms_each):>13} {r.infer_img_s:>11.2f} "
                     f"{_rounds_text(r.infer_ms_each):>13} "
                     f"{r.train_img_s / rcnn.train_img_s:>10.2f}x {r.infer_img_s / rcnn.infer_img_s:>10.2f}x "
                     f"{r.params / 1e6:>10.2f} {r.flops_per_image / 1e9:>10.3f} {dets:>8}")
    lines += ["", f"{'target (demo widths, not matched)':<46} {'median [q1-q3] of the rounds':>28}  settled  result"]
    for t in summary["targets"]:
        spread = summary["ratio_spreads"][t["ratio"]]
        lines.append(f"{t['name']:<46} {_spread_text(spread):>28}  {spread['settled_after']:>3}/{spread['rounds']:<3}  "
                     f"{'PASS' if t['pass'] else 'FAIL'}")
    lines.append("(settled: the rounds after which the running median of the ratio stayed within 5% of the final)")
    return "\n".join(lines)


def _spread_text(spread: dict) -> str:
    return f"{spread['median']:.2f}x [{spread['q1']:.2f}-{spread['q3']:.2f}]"


def format_breakdowns(title: str, breakdowns: dict[str, dict]) -> str:
    """ms per image of each box of Fig. 2, forward + backward in training, for each variant."""
    lines = [f"{title}: time per box of Fig. 2 under the profiler, ms/image (training: forward + backward)",
             ""]
    for mode in ("train", "infer"):
        found = {n: Breakdown(**b[mode]) for n, b in breakdowns.items() if b.get(mode)}
        if not found:
            continue
        shown = {r for b in found.values() for r in b.rows(min_ms=0.005)}
        rows = [r for r in (*SCOPES, OPTIMIZER, OTHER) if r in shown]
        lines.append(f"{'training' if mode == 'train' else 'inference':<22}" + "".join(f"{n:>18}" for n in found))
        for r in rows:
            cells = []
            for n, b in found.items():
                ms = b.total(r)
                cells.append(f"{ms:>9.2f} ({100 * ms / b.wall_ms_per_image:>4.1f}%)" if ms else f"{'-':>18}")
            lines.append(f"  {r:<20}" + "".join(f"{c:>18}" for c in cells))
        lines.append(f"  {'total':<20}" + "".join(f"{b.wall_ms_per_image:>9.2f} {'':>7}" for b in found.values()))
        lines.append("")
    return "\n".join(lines).rstrip()


# --- matched widths ---

def format_matched(matched: dict, threads: int, cpu: str) -> str:
    w, bb = matched["widths"], matched["backbone"]
    h, wd = matched["input_size"]
    lines = [
        f"MATCHED WIDTHS (profile '{matched['profile']}'): PEP (baseline and {matched['pep_variant']}) vs Mask R-CNN, "
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
        f"{matched['iters']} timed rounds per mode, the models in turns; ms/img = median round / batch; training in "
        f"{matched['train_amp'] or 'full precision'}",
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
    lines += ["", f"{'median of the rounds [q1-q3]':<20} {'pep/MRCNN train':>22} {'pep/MRCNN infer':>22} "
                  f"{'pep/baseline train':>22} {'pep/baseline infer ms':>22}"]
    for depth, spread in matched["ratio_spreads"].items():
        cells = ["n/a" if spread[k] is None else _spread_text(spread[k])
                 for k in ("train", "infer", "pep_train_vs_baseline", "pep_infer_time_vs_baseline")]
        lines.append(f"{'ResNet-' + depth[1:] + '-FPN':<20}" + "".join(f" {c:>22}" for c in cells))
    lines.append("(img/s ratios: above 1x pep is the faster; the last column is pep's time per image over "
                 "baseline's: at most 1.1x is the target, as is at least 0.8x for the one before)")
    for depth, ratio in matched["ratios_pep_vs_maskrcnn"].items():
        for t in MODULE_TARGETS:
            if ratio[t.ratio] is not None:
                lines.append(f"  {depth}: {t.name}: {ratio[t.ratio]:.2f}x  {'PASS' if t.passes(ratio[t.ratio]) else 'FAIL'}")
    skipped = [d for d in matched["depths"] if d not in matched["train_depths"]]
    if skipped:
        lines.append(f"training not timed at {', '.join(f'R{d}' for d in skipped)} (--coco-train-depths "
                     f"{','.join(str(d) for d in matched['train_depths'])}): inference only there")
    return "\n".join(lines)
