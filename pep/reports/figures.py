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
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from pep.config import VARIANTS, output_path, resolve_data_path, results_path, run_dir  # noqa: E402
from pep.data.coco import load_coco  # noqa: E402
from pep.jsonfile import StagedOutputs  # noqa: E402
from pep.engine.curves import read_log  # noqa: E402
from pep.errors import PepError  # noqa: E402
from pep.jsonfile import read_json  # noqa: E402
from pep.reports import tables  # noqa: E402

log = logging.getLogger(__name__)

DPI = 100
CURVES_SIZE = (15.0, 7.5)      # inches; the PNG is this times DPI pixels
AP_SIZE = (13.0, 5.0)
QUALITATIVE_CELL = 2.6         # inches per image column
QUALITATIVE_HEADER = 1.0       # inches above the grid for the title and legend
AP_KEYS = ("AP", "AP50", "AP75")
MATCH_IOU = 0.5
# one colour per variant, the same in every figure
VARIANT_COLOURS = dict(zip(VARIANTS, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")))
# terms as the log holds them: each already multiplied by its weight in params.yaml
LOSS_TITLES = {"loss": "total (sum of the variant's own terms)", "loss_sem": "semantics perceiving",
               "loss_mask": "mask (lambda x dice)", "loss_exc": "excavating: centres",
               "loss_exc_cls": "excavating: classes", "loss_pur": "purifying: similarity"}
FP_COLOUR = np.array([1.0, 0.0, 0.0])
CROWD_COLOUR = np.array([0.1, 0.1, 0.1])

plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})


# -- what is on disk ------------------------------------------------------------------------------

def read_metrics(cfg: dict) -> dict[str, dict]:
    """{variant: val.json content} for the variants evaluated (as the tables read them); a
    missing one is warned about."""
    found = tables.read_metrics(cfg)
    for variant in VARIANTS:
        if variant not in found:
            log.warning("%s: not found; variant '%s' is left out of the figures",
                        output_path(cfg, "metrics", variant, "val.json"), variant)
    return found


def seeds_of(cfg: dict, metrics: dict) -> list[int]:
    return [int(s) for s in metrics.get("seeds", cfg["train"]["seeds"])]


def read_train_log(path: Path) -> pd.DataFrame:
    """One row per logged step of a train_log.jsonl, indexed by iteration."""
    records = read_log(path)
    if not records:
        raise PepError(f"{path}: empty training log")
    return pd.DataFrame.from_records(records).set_index("iteration").sort_index()


# -- figure 1: training curves --------------------------------------------------------------------

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
    fig.suptitle(f"Training curves on {tables.dataset_name(cfg)} (train split): losses (log scale, {smoothing}) "
                 "and learning rate", x=0.01, ha="left", fontsize=14)
    if len(panels) < rows * cols:  # the spare panel holds the legend
        axes.flat[-1].legend(handles=handles, loc="center", title="variant", title_fontsize=12,
                             fontsize=12, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:
        fig.legend(handles=handles, loc="upper right", ncol=len(handles), frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
    return _save(fig, png)


# -- figure 2: AP per variant ---------------------------------------------------------------------

def _seed_values(metrics: dict, key: str) -> list[float]:
    per_seed = metrics.get("per_seed")
    values = [s[key] for s in per_seed.values()] if isinstance(per_seed, dict) else [metrics[key]]
    return [float(v) for v in values if v is not None and v >= 0]


def plot_ap(cfg: dict, metrics: dict[str, dict], png: Path) -> Path:
    """One panel per stat: bar = mean over seeds, error bar = std, dots = seeds, and the 95%
    bootstrap interval (val images resampled) where it was computed."""
    variants = list(metrics)
    boots = {v: tables.read_bootstrap(cfg, v) for v in variants}
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
    fig.suptitle(f"Mask AP per variant, val split of {tables.dataset_name(cfg)}\n(COCO segm; {seed_text})",
                 x=0.01, y=0.98, ha="left", va="top", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return _save(fig, png)


def _variant_tick(variant: str, metrics: dict, budgets: set) -> str:
    seen = metrics.get("images_seen")
    return f"{variant}\n{seen / 1000:.1f}k img" if len(budgets) > 1 and isinstance(seen, int) else variant


# -- figure 3: qualitative ------------------------------------------------------------------------

def _rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def match_image(gt: COCO, image_id: int, detections: list[dict], score_threshold: float) -> dict:
    """Greedy matching at IoU 0.5 as COCOeval does it (by score, same category, each ground-truth
    instance once); detections on an iscrowd region are ignored, not false.

    Returns {"tp", "fp", "fn", "f1", "dets": the kept detections, "det_match": per detection the
    index of its ground-truth instance, -1 false, -2 ignored, "gts": non-crowd annotations,
    "crowds": crowd annotations}.
    """
    anns = gt.imgToAnns.get(image_id, [])
    gts = [a for a in anns if not a.get("iscrowd", 0)]
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    dets = sorted((d for d in detections if d["score"] >= score_threshold), key=lambda d: -d["score"])
    det_match = [-1] * len(dets)
    taken = [False] * len(gts)
    if dets and (gts or crowds):
        det_rles = [_rle(d["segmentation"]) for d in dets]
        gt_rles = [gt.annToRLE(a) for a in gts + crowds]
        ious = np.asarray(mask_utils.iou(det_rles, gt_rles, [0] * len(gts) + [1] * len(crowds)))
        ious = ious.reshape(len(dets), len(gts) + len(crowds))
        for i, det in enumerate(dets):
            best, best_iou = -1, MATCH_IOU
            for j, ann in enumerate(gts):
                if not taken[j] and ann["category_id"] == det["category_id"] and ious[i, j] >= best_iou:
                    best, best_iou = j, ious[i, j]
            if best >= 0:
                taken[best], det_match[i] = True, best
            elif crowds and ious[i, len(gts):].max() >= MATCH_IOU:
                det_match[i] = -2
    tp = sum(taken)
    fp = sum(m == -1 for m in det_match)
    fn = len(gts) - tp
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "f1": f1, "dets": dets, "det_match": det_match,
            "gts": gts, "crowds": crowds}


def group_by_image(results: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for record in results:
        out.setdefault(int(record["image_id"]), []).append(record)
    return out


def select_images(gt: COCO, detections: dict[str, dict[int, list[dict]]], count: int,
                  score_threshold: float) -> list[int]:
    """`count` val images where the variants disagree most, among the crowded ones.

    Crowded = at least the median number of (non-crowd) ground-truth instances per image;
    ranked by the spread (max - min) over variants of the per-image F1 at IoU 0.5, then by the
    number of instances, then by image id: deterministic, and with one variant simply the most
    crowded images.
    """
    sizes = {i: sum(not a.get("iscrowd", 0) for a in gt.imgToAnns.get(i, [])) for i in gt.getImgIds()}
    if not sizes:
        return []
    median = float(np.median(list(sizes.values())))
    crowded = [i for i, n in sizes.items() if n >= median and n > 0] or list(sizes)
    ranked = []
    for image_id in crowded:
        f1 = [match_image(gt, image_id, per_image.get(image_id, []), score_threshold)["f1"]
              for per_image in detections.values()]
        ranked.append((-(max(f1) - min(f1)), -sizes[image_id], image_id))
    return [image_id for *_, image_id in sorted(ranked)[:count]]


def _palette(n: int) -> np.ndarray:
    """n saturated colours whose neighbours in the list differ most in hue; no reds (false
    positives are red)."""
    from matplotlib.colors import hsv_to_rgb

    hues = 0.07 + 0.86 * ((np.arange(n) * 0.618034) % 1.0)  # golden-ratio steps avoid hue 0 = red
    values = np.where(np.arange(n) % 2 == 0, 0.95, 0.7)
    return hsv_to_rgb(np.stack([hues, np.full(n, 0.9), values], axis=1))


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    inner = mask.copy()
    for _ in range(width):  # erosion by shifting: cheap, and no scipy needed
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _overlay(image: np.ndarray, masks: list[np.ndarray], colours: list[np.ndarray],
             alphas: list[float] | None = None) -> np.ndarray:
    # on a pale grey copy of the image, so that the masks' colours are not lost in its own
    out = 0.45 + 0.4 * (image.astype(np.float32).mean(axis=2, keepdims=True) / 255.0).repeat(3, axis=2)
    width = max(1, round(max(image.shape[:2]) / 160))
    alphas = alphas or [0.6] * len(masks)
    order = np.argsort([-int(m.sum()) for m in masks])  # large first, so small masks stay visible
    for k in order:
        mask, colour, alpha = masks[k].astype(bool), colours[k], alphas[k]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[_boundary(mask, width)] = colour
    return out


def _load_image(folder: Path, info: dict) -> np.ndarray:
    path = folder / info["file_name"]
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise PepError(f"{path}: val image not found (image id {info['id']})") from None
    except OSError as exc:
        raise PepError(f"{path}: cannot read the val image ({exc})") from None


def read_results(cfg: dict, metrics: dict[str, dict]) -> dict[str, dict[int, list[dict]]]:
    """{variant: {image_id: detections}} from the first seed's results_val.json."""
    found = {}
    for variant, m in metrics.items():
        path = results_path(cfg, variant, seeds_of(cfg, m)[0], "val")
        if not path.exists():
            log.warning("%s: not found; variant '%s' is left out of the qualitative figure", path, variant)
            continue
        results = read_json(path, "results file")
        if not isinstance(results, list):
            raise PepError(f"{path}: expected a JSON list of COCO results")
        for index, record in enumerate(results):
            if not isinstance(record, dict) or not {"image_id", "category_id", "segmentation",
                                                    "score"} <= set(record):
                raise PepError(f"{path}: record {index} is not a COCO segm result (needs image_id, "
                               "category_id, segmentation, score)")
        found[variant] = group_by_image(results)
    if not found:
        raise PepError(f"{output_path(cfg, 'results')}: no <variant>/seed<k>/results_val.json of any "
                       "evaluated variant; run `pep evaluate` first")
    return found


# the grid is laid out by hand, in inches: tight_layout leaves uneven gaps around images
_MARGIN_LEFT, _MARGIN_RIGHT, _COL_GAP = 0.75, 0.1, 0.12
_TITLES, _ROW_GAP, _FOOT = 0.35, 0.4, 0.45   # column titles, counts line between rows, last one


def _grid(cols: int, aspects: list[float]) -> tuple[float, list[float]]:
    """Image width and the height of each row (images of height/width aspects[k], clipped)."""
    width = (QUALITATIVE_CELL * cols - _MARGIN_LEFT - _MARGIN_RIGHT - (cols - 1) * _COL_GAP) / cols
    return width, [width * min(max(a, 0.5), 2.0) for a in aspects]


def qualitative_size(cols: int, aspects: list[float]) -> tuple[float, float]:
    """Figure inches for `cols` columns and one row per image of height/width aspects[k]."""
    _, heights = _grid(cols, aspects)
    return (QUALITATIVE_CELL * cols,
            QUALITATIVE_HEADER + _TITLES + sum(heights) + _ROW_GAP * (len(heights) - 1) + _FOOT)


def plot_qualitative(cfg: dict, metrics: dict[str, dict], png: Path, score_threshold: float = 0.3,
                     num_images: int = 4) -> Path:
    """Rows: val images; columns: the image, its ground truth, each variant's kept masks.

    A predicted mask matched to a ground-truth instance (IoU >= 0.5, same class) takes that
    instance's colour, so the columns can be compared object by object; false positives are red,
    crowd regions and detections on them black.
    """
    detections = read_results(cfg, metrics)
    gt = load_coco(resolve_data_path(cfg, "val_annotations"))
    images = resolve_data_path(cfg, "val_images")
    chosen = select_images(gt, detections, num_images, score_threshold)
    if not chosen:
        raise PepError(f"{resolve_data_path(cfg, 'val_annotations')}: no val images to show")
    variants = list(detections)
    cols = 2 + len(variants)
    aspects = [gt.imgs[i]["height"] / gt.imgs[i]["width"] for i in chosen]
    size = qualitative_size(cols, aspects)
    fig = plt.figure(figsize=size, dpi=DPI)
    cell, heights = _grid(cols, aspects)
    axes = np.empty((len(chosen), cols), dtype=object)
    top = size[1] - QUALITATIVE_HEADER - _TITLES
    for row, h in enumerate(heights):
        top -= h
        for col in range(cols):
            left = _MARGIN_LEFT + col * (cell + _COL_GAP)
            axes[row, col] = fig.add_axes((left / size[0], top / size[1], cell / size[0], h / size[1]))
        top -= _ROW_GAP
    for row, image_id in enumerate(chosen):
        info = gt.imgs[image_id]
        image = _load_image(images, info)
        matches = {v: match_image(gt, image_id, detections[v].get(image_id, []), score_threshold)
                   for v in variants}
        first = next(iter(matches.values()))
        gts, crowds = first["gts"], first["crowds"]
        colours = _palette(len(gts))
        gt_masks = [gt.annToMask(a) for a in gts + crowds]
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(f"image {image_id}\n{len(gts)} objects"
                                + (f"\n+ {len(crowds)} crowd region" if crowds else ""), fontsize=11)
        axes[row, 1].imshow(_overlay(image, gt_masks, [*colours, *[CROWD_COLOUR] * len(crowds)]))
        for col, variant in enumerate(variants, start=2):
            found = matches[variant]
            masks = [mask_utils.decode(_rle(d["segmentation"])) for d in found["dets"]]
            det_colours = [colours[m] if m >= 0 else (FP_COLOUR if m == -1 else CROWD_COLOUR)
                           for m in found["det_match"]]
            # false positives lightly filled, so that they do not hide the matched masks
            alphas = [0.6 if m >= 0 else 0.2 for m in found["det_match"]]
            axes[row, col].imshow(_overlay(image, masks, det_colours, alphas))
            axes[row, col].set_xlabel(f"{found['tp']} found, {found['fn']} missed, {found['fp']} false",
                                      fontsize=10)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image")
    axes[0, 1].set_title("ground truth")
    for col, variant in enumerate(variants, start=2):
        axes[0, col].set_title(f"{variant} (AP {metrics[variant]['AP']:.1f})",
                               color=VARIANT_COLOURS.get(variant, "black"), fontweight="bold")
    for variant in variants:
        best = max((d["score"] for image_id in chosen for d in detections[variant].get(image_id, [])),
                   default=None)
        if best is None or best < score_threshold:
            log.warning("%s: no detection scores >= %g on the images shown (best %s); lower "
                        "--score-threshold to see its masks", variant, score_threshold,
                        "none" if best is None else f"{best:.3f}")
    height = size[1]
    fig.suptitle(f"Val predictions on {tables.dataset_name(cfg)}\n(first seed, masks scored >= "
                 f"{score_threshold:g}; images where the variants differ most)",
                 x=0.01, y=1 - 0.08 / height, ha="left", va="top", fontsize=13)
    fig.text(0.01, 1 - 0.6 / height,
             f"colour = the ground-truth object a mask matches (IoU >= {MATCH_IOU}, same class)\n"
             "red outline = false positive, black = crowd region (and detections on it)",
             ha="left", va="top", fontsize=10)
    return _save(fig, png)


# -- all three ------------------------------------------------------------------------------------

def _save(fig, png: Path) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    # no bbox_inches="tight": the size stays what the figure says; the format is named since a
    # staged file's name does not end in .png
    fig.savefig(png, dpi=DPI, format="png")
    plt.close(fig)
    return png


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
