"""Figure 1, reports/figures/training_curves.png: every loss term and the learning rate against
images seen, from runs/<variant>/seed<k>/train_log.jsonl; and reports/plots/training_curves.csv,
the total loss per variant for `dvc plots show`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from pep.config import output_path, run_dir
from pep.engine.curves import read_log
from pep.errors import PepError
from pep.reports.figures.common import DPI, VARIANT_COLOURS, _save, log, seeds_of
from pep.reports.results import dataset_name

CURVES_SIZE = (15.0, 7.5)      # inches; the PNG is this times DPI pixels
# terms as the log holds them: each already multiplied by its weight in params.yaml
LOSS_TITLES = {"loss": "total (sum of the variant's own terms)", "loss_sem": "semantics perceiving",
               "loss_mask": "mask (lambda x dice)", "loss_exc": "excavating: centres",
               "loss_exc_cls": "excavating: classes", "loss_pur": "purifying: similarity"}


def read_train_log(path: Path) -> pd.DataFrame:
    """One row per logged step of a train_log.jsonl, indexed by iteration."""
    records = read_log(path)
    if not records:
        raise PepError(f"{path}: empty training log")
    return pd.DataFrame.from_records(records).set_index("iteration").sort_index()


def _window(points: int) -> int:
    return max(1, points // 15)  # a centred mean over ~1/15 of the run keeps the trend in place


def _smooth(series: pd.Series) -> pd.Series:
    return series.rolling(_window(len(series)), center=True, min_periods=1).mean()


def read_training_logs(cfg: dict, metrics: dict[str, dict]) -> dict[str, list[pd.DataFrame]]:
    """Every evaluated variant's training logs, one frame per seed."""
    logs: dict[str, list[pd.DataFrame]] = {}
    for variant, m in metrics.items():
        for seed in seeds_of(cfg, m):
            path = run_dir(cfg, variant, seed) / "train_log.jsonl"
            if path.exists():
                logs.setdefault(variant, []).append(read_train_log(path))
            else:
                log.warning("%s: not found; %s seed %d is left out of the training curves",
                            path, variant, seed)
    if not logs:
        raise PepError(f"{output_path(cfg, 'runs')}: no train_log.jsonl of any evaluated variant")
    return logs


def write_training_curves_csv(logs: dict[str, list[pd.DataFrame]], csv: Path) -> Path:
    """The total loss per variant (mean over seeds) by iteration, one column per variant: the
    data of `dvc plots show`."""
    columns = {variant: pd.concat([f["loss"] for f in frames], axis=1).mean(axis=1)
               for variant, frames in logs.items()}
    table = pd.DataFrame(columns).rename_axis("iteration")
    csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, float_format="%.5g")
    return csv


def plot_training_curves(cfg: dict, logs: dict[str, list[pd.DataFrame]], png: Path) -> Path:
    """One panel per loss term and one for the learning rate; x = images seen."""
    batch = cfg["train"]["batch_size"]
    present = set().union(*(frame.columns for frames in logs.values() for frame in frames))
    terms = [k for k in LOSS_TITLES if k in present]
    terms += sorted(k for k in present if k.startswith("loss") and k not in LOSS_TITLES)
    panels = [*terms, "lr"]
    titles = {**LOSS_TITLES, "loss_mask": f"mask ({cfg['model']['mask']['loss_weight']:g} x dice)"}
    cols = 4 if len(panels) > 4 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=CURVES_SIZE, dpi=DPI, sharex=True, squeeze=False)
    for ax, key in zip(axes.flat, panels):
        for variant, frames in logs.items():
            series = [_smooth(f[key].dropna()) for f in frames if key in f and f[key].notna().any()]
            if not series:
                continue  # this variant has no such term (its module is off)
            colour = VARIANT_COLOURS.get(variant, "black")
            table = pd.concat(series, axis=1)
            x = table.index.to_numpy() * batch
            if len(series) > 1:
                ax.fill_between(x, table.min(axis=1), table.max(axis=1), color=colour, alpha=0.2,
                                linewidth=0)
            ax.plot(x, table.mean(axis=1), color=colour, linewidth=1.8)
        if key == "lr":
            ax.set_title("learning rate")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
        else:
            ax.set_title(titles.get(key, key))
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.4, not 4 x 10^-1
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("images seen")
        ax.xaxis.set_tick_params(labelbottom=True)
    several = any(len(frames) > 1 for frames in logs.values())
    handles = [Line2D([], [], color=VARIANT_COLOURS.get(v, "black"), linewidth=2.5,
                      label=f"{v} ({len(frames)} seed{'s' if len(frames) > 1 else ''})")
               for v, frames in logs.items()]
    if several:
        handles.append(Patch(color="grey", alpha=0.3, label="range over seeds\n(line: their mean)"))
    window = _window(max(len(f) for frames in logs.values() for f in frames))
    smoothing = f"moving mean over {window} logged steps" if window > 1 else "as logged"
    fig.suptitle(f"Training curves on {dataset_name(cfg)} (train split): losses (log scale, {smoothing}) "
                 "and learning rate", x=0.01, ha="left", fontsize=14)
    if len(panels) < rows * cols:  # the spare panel holds the legend
        axes.flat[-1].legend(handles=handles, loc="center", title="variant", title_fontsize=12,
                             fontsize=12, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        fig.legend(handles=handles, loc="upper right", ncol=len(handles), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
    return _save(fig, png)
