"""`pep figures`: the report's three figures, drawn from what training and evaluation wrote.

reports/figures/
  training_curves.png   every loss term and the learning rate against images seen, one colour
                        per variant (several seeds: their mean, with the seeds' range shaded)
  ap_per_variant.png    mask AP, AP50 and AP75 per variant: bar = mean over seeds, error bar =
                        std, one dot per seed, and a 95% bootstrap interval where
                        metrics/<variant>/val_bootstrap.json exists
  qualitative.png       as the paper's Fig. 5: val images, their ground truth and each variant's
                        masks; the images are picked where the variants differ most

Nothing is recomputed with a model: the figures read runs/<variant>/seed<k>/train_log.jsonl,
metrics/<variant>/val.json and results/<variant>/seed<first>/results_val.json, with the val
annotations and images of the data set.

The code, by what it draws: common.py (DPI, colours, the metrics and seeds read, saving),
curves.py, ap.py, matching.py (the detections the qualitative figure matches and picks) and
qualitative.py; this module draws all three.
"""

from __future__ import annotations

import matplotlib

# before any of this package's modules imports pyplot: every import of one runs this file first
matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

from pep.config import output_path  # noqa: E402
from pep.errors import PepError  # noqa: E402
from pep.jsonfile import StagedOutputs  # noqa: E402
from pep.reports.figures.ap import AP_KEYS, AP_SIZE, plot_ap  # noqa: E402
from pep.reports.figures.common import DPI, VARIANT_COLOURS, log, read_metrics, seeds_of  # noqa: E402
from pep.reports.figures.curves import (CURVES_SIZE, LOSS_TITLES, plot_training_curves,  # noqa: E402
                                        read_train_log, read_training_logs, write_training_curves_csv)
from pep.reports.figures.matching import (MATCH_IOU, group_by_image, match_image, read_results,  # noqa: E402
                                          select_images)
from pep.reports.figures.matching import _rle  # noqa: E402, F401  (tests/test_figures.py uses figures._rle)
from pep.reports.figures.qualitative import (CROWD_COLOUR, FP_COLOUR, QUALITATIVE_CELL,  # noqa: E402
                                             QUALITATIVE_HEADER, plot_qualitative, qualitative_size)

__all__ = ["AP_KEYS", "AP_SIZE", "CROWD_COLOUR", "CURVES_SIZE", "DPI", "FP_COLOUR", "LOSS_TITLES", "MATCH_IOU",
           "QUALITATIVE_CELL", "QUALITATIVE_HEADER", "VARIANT_COLOURS", "group_by_image", "log", "make_figures",
           "figures_command", "match_image", "plot_ap", "plot_qualitative", "plot_training_curves", "qualitative_size",
           "read_metrics", "read_results", "read_train_log", "read_training_logs", "seeds_of", "select_images",
           "write_training_curves_csv"]


def make_figures(cfg: dict, score_threshold: float = 0.3, num_images: int = 4) -> list[Path]:
    """Write the three figures under reports/figures/ and the loss curves' data for DVC under
    reports/plots/; return their paths."""
    if not 0 <= score_threshold <= 1:
        raise PepError(f"--score-threshold must be within [0, 1], got {score_threshold}")
    if num_images < 1:
        raise PepError(f"--images must be at least 1, got {num_images}")
    folder = output_path(cfg, "reports", "figures")
    csv = output_path(cfg, "reports", "plots", "training_curves.csv")
    curves, ap, grid = folder / "training_curves.png", folder / "ap_per_variant.png", folder / "qualitative.png"
    with StagedOutputs([csv, curves, ap, grid], "`pep figures`") as outputs:
        metrics = read_metrics(cfg)
        logs = read_training_logs(cfg, metrics)
        write_training_curves_csv(logs, outputs.temp_path(csv))
        plot_training_curves(cfg, logs, outputs.temp_path(curves))
        plot_ap(cfg, metrics, outputs.temp_path(ap))
        plot_qualitative(cfg, metrics, outputs.temp_path(grid), score_threshold, num_images)
        outputs.publish()
    return [csv, curves, ap, grid]


def figures_command(cfg: dict, score_threshold: float = 0.3, num_images: int = 4) -> int:
    """`pep figures`: the figures, each file named as it is written."""
    for path in make_figures(cfg, score_threshold, num_images):
        print(f"wrote {path}")
    return 0
