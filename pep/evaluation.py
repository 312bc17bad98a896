"""COCO evaluation: results records, COCOeval scores, and the test-dev submission zip.

pycocotools' COCOeval is the reference; this module only guards its edges (DESIGN 4):

- segm results carry no `bbox`: `loadRes` would take a present box's w*h as the detection's
  area and so move it between the small/medium/large buckets;
- an empty results list scores 0 instead of failing inside `loadRes`;
- records are checked first, so that a wrong image_id, category_id, mask size or a malformed
  record is a `PepError` naming the record, not a bare assert -- or, for a mask at the wrong size,
  a silent IoU of -1 that never matches anything;
- pycocotools' progress prints are silenced; the summary table is returned instead.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import re
import zipfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pep.data.coco import left_out, load_coco, scored_categories
from pep.errors import PepError
from pep.jsonfile import StagedOutputs, read_json, staged_into

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl",
             "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("segm", "bbox")
_ALGORITHM_NAME = re.compile(r"[A-Za-z0-9-]+")


def encode_instances(image_id: int, masks: np.ndarray | torch.Tensor,
                     scores: Iterable[float] | np.ndarray | torch.Tensor,
                     category_ids: Iterable[int] | np.ndarray | torch.Tensor) -> list[dict]:
    """COCO results records of one image's instances (masks (K, H, W) at the original size).

    Each record holds image_id, category_id (the COCO id), a compressed RLE whose counts are a
    str (JSON-ready) and the score; no bbox, see the module docstring.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    scores = [float(s) for s in _as_list(scores)]
    category_ids = [int(c) for c in _as_list(category_ids)]
    if masks.ndim != 3 or not len(masks) == len(scores) == len(category_ids):
        raise ValueError(f"expected masks (K, H, W) with K scores and K category ids, got masks "
                         f"{masks.shape}, {len(scores)} scores, {len(category_ids)} category ids")
    if masks.dtype.kind == "f":
        raise ValueError("masks must be binary (bool); threshold the mask probabilities first")
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0) != 0, dtype=np.uint8))
    records = []
    for rle, score, category_id in zip(rles, scores, category_ids):
        rle["counts"] = rle["counts"].decode("ascii")
        records.append({"image_id": int(image_id), "category_id": category_id,
                        "segmentation": rle, "score": score})
    return records


def _as_list(values: Any) -> list:
    """Python numbers from a list, an array or a (GPU) tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values).reshape(-1).tolist()


def add_boxes(results: list[dict]) -> list[dict]:
    """Copies of the records with "bbox" [x, y, w, h] from their segmentation (for bbox scoring)."""
    boxed = []
    for index, record in enumerate(results):
        segmentation = record.get("segmentation") if isinstance(record, dict) else None
        if not _is_compressed_rle(segmentation):
            raise PepError(f"results record {index}: no compressed-RLE segmentation to take a box from")
        boxed.append({**record, "bbox": mask_utils.toBbox(segmentation).tolist()})
    return boxed


def _is_compressed_rle(segmentation: Any) -> bool:
    return (isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes))
            and isinstance(segmentation.get("size"), (list, tuple)) and len(segmentation["size"]) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) for v in segmentation["size"]))


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _checked_record(record: Any, gt: COCO, iou_type: str) -> dict:
    """A clean copy of one results record for loadRes (which writes into what it is given),
    or a ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"is a {type(record).__name__}, not an object")
    for key in ("image_id", "category_id", "score"):
        if key not in record:
            raise ValueError(f"has no '{key}'")
    image_id, category_id, score = record["image_id"], record["category_id"], record["score"]
    if not _is_integer(image_id) or int(image_id) not in gt.imgs:
        raise ValueError(f"image_id {image_id!r} is not an image of the ground truth")
    if not _is_integer(category_id) or int(category_id) not in gt.cats:
        raise ValueError(f"category_id {category_id!r} is not a category of the ground truth "
                         "(results use COCO category ids, not contiguous labels)")
    if int(category_id) in left_out(gt):
        raise ValueError(f"category_id {category_id} is left out of evaluation: "
                         f"{left_out(gt)[int(category_id)]}")
    if not _is_number(score):
        raise ValueError(f"score {score!r} is not a finite number")
    clean = {"image_id": int(image_id), "category_id": int(category_id), "score": float(score)}

    segmentation = record.get("segmentation")
    if iou_type == "bbox" and "bbox" in record:
        box = record["bbox"]
        if (not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_number, box))
                or box[2] < 0 or box[3] < 0):
            raise ValueError(f"bbox {box!r} is not [x, y, w, h] with w, h >= 0")
        clean["bbox"] = list(box)
        if segmentation is None:
            return clean
    if segmentation is None:
        raise ValueError("has no 'segmentation'" + (" and no 'bbox'" if iou_type == "bbox" else ""))
    if not _is_compressed_rle(segmentation):
        raise ValueError("segmentation is not a compressed RLE {'size': [h, w], 'counts': str} "
                         "(polygons and uncompressed RLE are not accepted as results)")
    image = gt.imgs[clean["image_id"]]
    expected = [image.get("height"), image.get("width")]
    if None not in expected and list(segmentation["size"]) != expected:
        raise ValueError(f"mask size {list(segmentation['size'])} (h, w) differs from the image's "
                         f"{expected}; masks must be at the original image size")
    clean["segmentation"] = segmentation
    if iou_type == "bbox" and "bbox" not in clean:
        clean["bbox"] = mask_utils.toBbox(segmentation).tolist()
    return clean


def _read_results(path: Path) -> list:
    results = read_json(path, "results file")
    if not isinstance(results, list):
        raise PepError(f"{path}: results file must hold a JSON list of records, "
                       f"not a {type(results).__name__}")
    return results


def _checked_records(results: Iterable[dict], gt: COCO, iou_type: str, where: str) -> list[dict]:
    """Every record checked (and copied) by _checked_record; a bad one is named by its index."""
    records = []
    for index, record in enumerate(results):
        try:
            records.append(_checked_record(record, gt, iou_type))
        except ValueError as exc:
            raise PepError(f"{where}: record {index} {exc}") from None
    return records


def _private_copy(gt: COCO) -> COCO:
    """COCOeval writes into the ground truth's annotations (RLE with bytes counts, an 'ignore'
    flag); scoring a shallow copy keeps the caller's COCO as loaded and JSON-serialisable."""
    annotations = [dict(a) for a in gt.dataset.get("annotations", [])]
    if any(a.get("id") == 0 for a in annotations):
        # COCOeval records a detection's matched ground-truth id and reads 0 as "no match"
        for number, annotation in enumerate(annotations, start=1):
            annotation["id"] = number
    coco = COCO()
    coco.dataset = {**gt.dataset, "annotations": annotations}
    coco.createIndex()
    coco.left_out_categories = left_out(gt)
    return coco


def _no_detections(gt: COCO) -> COCO:
    """The detections index loadRes cannot build from an empty list."""
    coco = COCO()
    coco.dataset = {"images": list(gt.dataset["images"]),
                    "categories": list(gt.dataset.get("categories", [])), "annotations": []}
    coco.createIndex()
    return coco


def evaluate(gt: COCO | str | Path, results: list[dict] | str | Path, iou_type: str = "segm",
             image_ids: Iterable[int] | None = None) -> dict:
    """Score results records (or a results JSON file) against the ground truth with COCOeval.

    Returns {"stats": the 12 COCOeval.stats as fractions keyed by STAT_KEYS, "per_category":
    {category_id: AP at IoU .50:.95, area all, 100 detections; -1 without ground truth},
    "num_detections": records on the scored images, "num_images": images scored,
    "summary": COCOeval's 12-line table}.
    """
    if iou_type not in IOU_TYPES:
        raise PepError(f"unknown iou type '{iou_type}' (expected one of: {', '.join(IOU_TYPES)})")
    if not isinstance(gt, COCO):
        gt = load_coco(gt)
    where = "results"
    if isinstance(results, (str, Path)):
        where = str(results)
        results = _read_results(Path(results))
    records = _checked_records(results, gt, iou_type, where)

    image_ids = sorted(set(gt.getImgIds() if image_ids is None else (int(i) for i in image_ids)))
    unknown = [i for i in image_ids if i not in gt.imgs]
    if unknown:
        raise PepError(f"image ids not in the ground truth: {unknown[:10]}")
    if not image_ids:
        raise PepError("no images to evaluate")

    table = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()):  # progress chatter
        gt = _private_copy(gt)
        detections = gt.loadRes(records) if records else _no_detections(gt)
        coco_eval = COCOeval(gt, detections, iou_type)
        coco_eval.params.imgIds = image_ids
        coco_eval.params.catIds = scored_categories(gt)
        coco_eval.evaluate()
        coco_eval.accumulate()
    with contextlib.redirect_stdout(table):
        coco_eval.summarize()

    params = coco_eval.params
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"),
                                            params.maxDets.index(100)]
    per_category = {}
    for k, category_id in enumerate(params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_category[int(category_id)] = float(np.mean(valid)) if valid.size else -1.0
    scored = set(image_ids)
    return {"stats": {key: float(value) for key, value in zip(STAT_KEYS, coco_eval.stats)},
            "per_category": per_category,
            "num_detections": sum(r["image_id"] in scored for r in records),
            "num_images": len(image_ids),
            "summary": table.getvalue().rstrip("\n")}


def stats_in_percent(stats: dict) -> dict:
    """The 12 stats in percent, 3 decimals, as metrics/<variant>/val.json holds them; -1 (no
    ground truth in that area range) stays -1."""
    return {key: stats[key] if stats[key] == -1 else round(stats[key] * 100, 3) for key in STAT_KEYS}


def submission_paths(out_dir: str | Path, algorithm: str) -> tuple[Path, Path]:
    """detections_test-dev2017_<algorithm>_results.json and .zip under `out_dir`."""
    if not isinstance(algorithm, str) or not _ALGORITHM_NAME.fullmatch(algorithm):
        raise PepError(f"algorithm name {algorithm!r} for the submission file must be letters, "
                       "digits and dashes only")
    name = f"detections_test-dev2017_{algorithm}_results"
    return Path(out_dir) / f"{name}.json", Path(out_dir) / f"{name}.zip"


def write_submission(results: list[dict], out_dir: str | Path, algorithm: str,
                     outputs: StagedOutputs | None = None) -> Path:
    """Write the COCO test-dev upload: detections_test-dev2017_<algorithm>_results.json and the
    .zip holding it at its root. Staged in `outputs` (published by the caller with the rest of
    its stage's files), or, without it, published at once. Returns the zip's path."""
    json_path, zip_path = submission_paths(out_dir, algorithm)
    with staged_into(outputs, [json_path, zip_path], "the submission") as staged:
        staged.write_json(json_path, results, indent=None)
        with zipfile.ZipFile(staged.temp_path(zip_path), "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.write(staged.staged(json_path), arcname=json_path.name)
    return zip_path


def eval_results_command(gt_path: str | Path, results_path: str | Path, iou_type: str = "segm") -> dict:
    """What `pep eval-results GT_JSON RESULTS_JSON` prints: the 12 stats keyed by STAT_KEYS in
    percent with 3 decimals, as metrics/<variant>/*.json hold them (-1: no ground truth in
    that area range). The ground truth passes validate's checks first: pycocotools would loop
    for ever on an RLE whose counts miss its size."""
    return stats_in_percent(evaluate(gt_path, results_path, iou_type)["stats"])


def bootstrap_ap(gt: COCO | str | Path, results: list[dict], resamples: int | Sequence[Sequence[int]],
                 seed: int = 0, iou_type: str = "segm") -> dict:
    """AP (IoU .50:.95, area all, 100 detections) of `results` on bootstrap resamples of the
    ground truth's images, for paired intervals between variants.

    `resamples` is a count B (B draws of len(images) image ids with replacement, from
    numpy's default_rng(seed) over the sorted image ids: the same draws for any results on the
    same images, so that differences between variants are paired) or explicit lists of ids.
    COCOeval.evaluate() runs once; each resample then only rebuilds evalImgs, which COCOeval
    lays out per (category, area, image), by picking every drawn image's entries -- a duplicate
    draw repeats them, as a copy of the image under a new id would -- and re-accumulates.
    Returns {"B", "seed", "image_ids_hash" (of the sorted ids: which images were drawn from),
    "AP": [AP per resample, a fraction; -1 where no category has ground truth]}.
    """
    if iou_type not in IOU_TYPES:
        raise PepError(f"unknown iou type '{iou_type}' (expected one of: {', '.join(IOU_TYPES)})")
    if not isinstance(gt, COCO):
        gt = load_coco(gt)
    records = _checked_records(results, gt, iou_type, "results")
    image_ids = sorted(gt.getImgIds())
    if not image_ids:
        raise PepError("no images to evaluate")
    if isinstance(resamples, Integral):
        if resamples < 1:
            raise PepError(f"bootstrap resamples must be >= 1, got {resamples}")
        rng = np.random.default_rng(seed)
        draws = np.asarray(image_ids)[rng.integers(0, len(image_ids), size=(int(resamples), len(image_ids)))]
    else:
        draws = [[int(i) for i in draw] for draw in resamples]
        unknown = sorted({i for draw in draws for i in draw} - set(image_ids))
        if unknown:
            raise PepError(f"resampled image ids not in the ground truth: {unknown[:10]}")

    with contextlib.redirect_stdout(io.StringIO()):
        gt = _private_copy(gt)
        detections = gt.loadRes(records) if records else _no_detections(gt)
        coco_eval = COCOeval(gt, detections, iou_type)
        coco_eval.params.imgIds = image_ids
        coco_eval.params.catIds = scored_categories(gt)
        coco_eval.evaluate()
        full, evaluated = coco_eval.params, coco_eval.evalImgs
        n_images, n_areas = len(full.imgIds), len(full.areaRng)
        area = full.areaRngLbl.index("all")
        position = {image_id: i for i, image_id in enumerate(full.imgIds)}
        # Only AP is wanted: accumulate over area "all" and 100 detections, not the 4 x 3 grid.
        sub = copy.deepcopy(full)
        sub.areaRng, sub.areaRngLbl, sub.maxDets = [full.areaRng[area]], ["all"], [100]
        aps = []
        for draw in draws:
            picked = [position[int(i)] for i in draw]
            coco_eval.evalImgs = [evaluated[(k * n_areas + area) * n_images + i]
                                  for k in range(len(full.catIds)) for i in picked]
            sub.imgIds = [int(i) for i in draw]
            coco_eval._paramsEval = sub  # accumulate() reads the layout of evalImgs from here
            coco_eval.accumulate(sub)
            precision = coco_eval.eval["precision"][:, :, :, 0, 0]
            valid = precision[precision > -1]
            aps.append(float(np.mean(valid)) if valid.size else -1.0)
    digest = hashlib.sha256(json.dumps(image_ids).encode("ascii")).hexdigest()[:16]
    return {"B": len(aps), "seed": int(seed), "image_ids_hash": digest, "AP": aps}
