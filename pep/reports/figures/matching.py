"""What the qualitative figure shows: each variant's val detections (the first seed's
results_val.json), matched to the ground truth as COCOeval matches them, and the val images where
the variants differ most."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pep.config import output_path, results_path
from pep.errors import PepError
from pep.jsonfile import read_json
from pep.reports.figures.common import log, seeds_of

MATCH_IOU = 0.5


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
