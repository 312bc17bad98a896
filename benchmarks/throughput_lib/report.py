"""What the throughput benchmark reports: the summary, its tables, its warnings and its log.

- `summarise`: the demo comparison's results as one JSON-ready dict, with its ratios and
  whether each speed target (`TARGETS`) passes;
- `format_table` / `format_matched`: the text tables of the demo and matched comparisons;
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
from .models import BACKBONE, MASKRCNN
from .timing import Result

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


# --- matched widths ---

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
