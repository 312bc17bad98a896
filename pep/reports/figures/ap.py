"""Figure 2, reports/figures/ap_per_variant.png: mask AP, AP50 and AP75 per variant, with the
seeds' spread and the bootstrap interval where metrics/<variant>/val_bootstrap.json exists."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from pep.reports.figures.common import DPI, VARIANT_COLOURS, _save, seeds_of
from pep.reports.results import dataset_name, read_bootstrap

AP_SIZE = (13.0, 5.0)
AP_KEYS = ("AP", "AP50", "AP75")


def _seed_values(metrics: dict, key: str) -> list[float]:
    per_seed = metrics.get("per_seed")
    values = [s[key] for s in per_seed.values()] if isinstance(per_seed, dict) else [metrics[key]]
    return [float(v) for v in values if v is not None and v >= 0]


def plot_ap(cfg: dict, metrics: dict[str, dict], png: Path) -> Path:
    """One panel per stat: bar = mean over seeds, error bar = std, dots = seeds, and the 95%
    bootstrap interval (val images resampled) where it was computed."""
    variants = list(metrics)
    boots = {v: read_bootstrap(cfg, v) for v in variants}
    fig, axes = plt.subplots(1, len(AP_KEYS), figsize=AP_SIZE, dpi=DPI, squeeze=False)
    x = np.arange(len(variants))
    top = max([max(_seed_values(m, k) or [0]) for m in metrics.values() for k in AP_KEYS] + [1.0])
    any_boot = any_std = False
    seen = {m.get("images_seen") for m in metrics.values()}  # the training budget, when it differs
    for ax, key in zip(axes[0], AP_KEYS):
        for i, variant in enumerate(variants):
            m, colour = metrics[variant], VARIANT_COLOURS.get(variant, "grey")
            values = _seed_values(m, key)
            mean = float(m[key]) if m[key] is not None and m[key] >= 0 else float("nan")
            ax.bar(i, mean, width=0.6, color=colour, alpha=0.8)
            std = (m.get("std") or {}).get(key)
            if std is not None and len(values) > 1:
                any_std = True
                ax.errorbar(i - 0.08, mean, yerr=std, color="black", capsize=5, linewidth=1.5)
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(i + jitter, values, s=22, color="white", edgecolor="black", zorder=3)
            boot = boots[variant]
            resampled = np.asarray(boot.get(key) or [] if boot else [], dtype=float)
            resampled = resampled[resampled >= 0]  # -1: a resample without that kind of instance
            if resampled.size:
                any_boot = True
                low, high = np.percentile(resampled, [2.5, 97.5])
                ax.vlines(i + 0.2, low, high, color="dimgrey", linewidth=4, alpha=0.8)
            label = f"{mean:.1f}" + (f"\n±{std:.1f}" if std is not None and len(values) > 1 else "")
            # at the foot of the bar, clear of the dots and error bars
            ax.annotate(label, (i, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=10, fontweight="bold")
        ax.set_xticks(x, [_variant_tick(v, metrics[v], seen) for v in variants])
        ax.set_title(f"mask {key}" + (" (IoU .50:.95)" if key == "AP" else ""))
        ax.set_ylabel("percent")
        ax.set_ylim(0, min(105.0, top * 1.15 + 2))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    seeds = sorted({len(seeds_of(cfg, m)) for m in metrics.values()})
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black",
                      label="one seed")]
    if any_std:
        handles.append(Line2D([], [], color="black", marker="_", markersize=10,
                              label="mean ± std over seeds"))
    if any_boot:
        handles.append(Line2D([], [], color="dimgrey", linewidth=4, label="95% bootstrap interval"))
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1, 0.9), ncol=len(handles),
               frameon=False)
    seed_text = ("one seed" if seeds == [1] else
                 "bar: mean over " + "/".join(map(str, seeds)) + " seeds")
    if len(seen) == 1 and isinstance(next(iter(seen)), int):
        seed_text += f", each trained on {next(iter(seen)):,} images"
    fig.suptitle(f"Mask AP per variant, val split of {dataset_name(cfg)}\n(COCO segm; {seed_text})",
                 x=0.01, y=0.98, ha="left", va="top", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return _save(fig, png)


def _variant_tick(variant: str, metrics: dict, budgets: set) -> str:
    seen = metrics.get("images_seen")
    return f"{variant}\n{seen / 1000:.1f}k img" if len(budgets) > 1 and isinstance(seen, int) else variant
