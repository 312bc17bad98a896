"""What the three figures share: the DPI, one colour per variant and the text sizes, the metrics
and seeds they are drawn from, the logger, and saving a PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt  # the package chose the file-only backend before any of its modules

from pep.config import VARIANTS, output_path
from pep.reports import results

log = logging.getLogger("pep.reports.figures")  # one logger for all the figures' modules

DPI = 100
# one colour per variant, the same in every figure
VARIANT_COLOURS = dict(zip(VARIANTS, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")))

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})


def read_metrics(cfg: dict) -> dict[str, dict]:
    """{variant: val.json content} for the variants evaluated (as the tables read them); a
    missing one is warned about."""
    found = results.read_metrics(cfg)
    for variant in VARIANTS:
        if variant not in found:
            log.warning("%s: not found; variant '%s' is left out of the figures",
                        output_path(cfg, "metrics", variant, "val.json"), variant)
    return found


def seeds_of(cfg: dict, metrics: dict) -> list[int]:
    return [int(s) for s in metrics.get("seeds", cfg["train"]["seeds"])]


def _save(fig, png: Path) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    # no bbox_inches="tight": the size stays what the figure says; the format is named since a
    # staged file's name does not end in .png
    fig.savefig(png, dpi=DPI, format="png")
    plt.close(fig)
    return png
