"""Figure 3, reports/figures/qualitative.png, as the paper's Fig. 5: a grid of val images, their
ground truth and each variant's masks, coloured by the ground-truth object they match."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pep.config import resolve_data_path
from pep.data.coco import load_coco
from pep.errors import PepError
from pep.reports.figures.common import DPI, VARIANT_COLOURS, _save, log
from pep.reports.figures.matching import MATCH_IOU, _rle, match_image, read_results, select_images
from pep.reports.results import dataset_name

QUALITATIVE_CELL = 2.6         # inches per image column
QUALITATIVE_HEADER = 1.0       # inches above the grid for the title and legend
FP_COLOUR = np.array([1.0, 0.0, 0.0])
CROWD_COLOUR = np.array([0.1, 0.1, 0.1])


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
    fig.suptitle(f"Val predictions on {dataset_name(cfg)}\n(first seed, masks scored >= "
                 f"{score_threshold:g}; images where the variants differ most)",
                 x=0.01, y=1 - 0.08 / height, ha="left", va="top", fontsize=13)
    fig.text(0.01, 1 - 0.6 / height,
             f"colour = the ground-truth object a mask matches (IoU >= {MATCH_IOU}, same class)\n"
             "red outline = false positive, black = crowd region (and detections on it)",
             ha="left", va="top", fontsize=10)
    return _save(fig, png)
