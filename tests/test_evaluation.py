"""pep.evaluation: the reference numbers, perfect and partial detections, the guarded edges.

The reference is cocoapi's own fake-results fixture (expected to 1e-9); the rest builds results
from tiny_coco's real ground truth, whose perfect detections must score exactly AP 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from conftest import FAKE100, TINY_COCO
from pep.data.coco import load_coco
from pep.errors import PepError
from pep.evaluation import (STAT_KEYS, add_boxes, encode_instances, eval_results_command,
                            evaluate, stats_in_percent, write_submission)

TINY_VAL = TINY_COCO / "annotations" / "instances_val2017.json"
EXPECTED = json.loads((FAKE100 / "expected_stats.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gt() -> COCO:
    return load_coco(TINY_VAL)


@pytest.fixture(scope="module")
def perfect(gt) -> list[dict]:
    """One score-1 detection per non-crowd annotation: its own decoded mask."""
    records = []
    for ann in gt.dataset["annotations"]:
        if not ann["iscrowd"]:
            mask = gt.annToMask(ann).astype(bool)[None]
            records += encode_instances(ann["image_id"], mask, [1.0], [ann["category_id"]])
    return records


def raw_pycocotools_stats(records: list[dict]) -> dict:
    """What plain loadRes + COCOeval (segm) make of the records, bbox and all (on a fresh gt: COCOeval
    writes into it, and loadRes into the records)."""
    gt = load_coco(TINY_VAL)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(json.loads(json.dumps(records))), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(STAT_KEYS, coco_eval.stats.tolist()))


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_reproduces_cocoapi_fake_results(iou_type, capsys):
    expected = EXPECTED[iou_type]
    gt = load_coco(FAKE100 / EXPECTED["gt"])
    out = evaluate(gt, FAKE100 / expected["results"], iou_type,
                   image_ids=sorted(gt.getImgIds())[:100])
    for key in STAT_KEYS:
        assert out["stats"][key] == pytest.approx(expected["stats"][key], abs=EXPECTED["tolerance"]), key
    assert out["num_images"] == 100 and out["num_detections"] == 734
    assert len(out["summary"].splitlines()) == 12
    assert capsys.readouterr().out == ""  # pycocotools' chatter silenced, its table returned


def test_eval_results_command_prints_the_12_stats_in_percent():
    """The fixture's gt is exactly its 100 images, so the command's default (all) agrees; the
    stats are in percent with 3 decimals, the metrics files' convention."""
    out = eval_results_command(FAKE100 / EXPECTED["gt"], FAKE100 / EXPECTED["segm"]["results"], "segm")
    assert tuple(out) == STAT_KEYS
    assert out == {k: round(100 * v, 3) for k, v in EXPECTED["segm"]["stats"].items()}


def test_encode_instances_records_decode_to_the_masks():
    masks = torch.zeros((2, 5, 7), dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    records = encode_instances(np.int64(9), masks, torch.tensor([0.9, 0.25]), torch.tensor([3, 1]))
    assert [sorted(r) for r in records] == [["category_id", "image_id", "score", "segmentation"]] * 2
    for record, mask, score, category_id in zip(records, masks.numpy(), [0.9, 0.25], [3, 1]):
        assert type(record["image_id"]) is int and record["image_id"] == 9
        assert type(record["category_id"]) is int and record["category_id"] == category_id
        assert type(record["score"]) is float and record["score"] == pytest.approx(score)
        assert isinstance(record["segmentation"]["counts"], str)
        assert record["segmentation"]["size"] == [5, 7]
        assert np.array_equal(mask_utils.decode(record["segmentation"]), mask)
    assert encode_instances(1, np.zeros((0, 5, 7), bool), [], []) == []
    with pytest.raises(ValueError, match="threshold"):
        encode_instances(1, np.zeros((1, 5, 7), np.float32), [1.0], [1])


def test_perfect_detections_score_one(gt, perfect):
    segm = evaluate(gt, perfect)
    assert segm["stats"]["AP"] == 1.0 and segm["stats"]["AR100"] == 1.0
    assert all(segm["stats"][k] in (1.0, -1.0) for k in ("AP50", "AP75", "APs", "APm", "APl"))
    assert segm["num_detections"] == len(perfect) and segm["num_images"] == len(gt.getImgIds())
    with_gt = {a["category_id"] for a in gt.dataset["annotations"]}
    assert segm["per_category"] == pytest.approx({c: 1.0 if c in with_gt else -1.0 for c in gt.getCatIds()})

    # Boxes from the masks are pixel-aligned, the ground truth's from float polygons: close, not equal.
    bbox = evaluate(gt, add_boxes(perfect), "bbox")["stats"]
    assert bbox["AP50"] > 0.99 and bbox["AP"] > 0.9
    assert evaluate(gt, perfect, "bbox")["stats"] == bbox  # boxes added when missing

    # COCOeval writes RLE with bytes counts into its gt, loadRes ids and areas into the records:
    # both are copies, so what the caller holds stays as it was.
    json.dumps(gt.dataset)
    assert {tuple(sorted(r)) for r in perfect} == {("category_id", "image_id", "score", "segmentation")}


def test_annotation_id_zero_in_a_coco_object_still_matches(gt, perfect):
    """COCOeval reads a matched ground-truth id of 0 as "no match"; a COCO object built by hand
    (not by load_coco, which renumbers) must score perfect results at 1 all the same."""
    zero_based = COCO()
    zero_based.dataset = {**gt.dataset, "annotations": [{**a, "id": i} for i, a in enumerate(gt.dataset["annotations"])]}
    with contextlib.redirect_stdout(io.StringIO()):
        zero_based.createIndex()
    assert evaluate(zero_based, perfect)["stats"]["AP"] == 1.0
    assert zero_based.dataset["annotations"][0]["id"] == 0  # the caller's object is untouched


def test_dropping_half_the_detections_halves_recall(gt, perfect):
    """Per category, recall is kept/total and precision 1 up to it (none without detections),
    so AR100 and AP are known exactly."""
    kept = perfect[::2]
    out = evaluate(gt, kept)
    total = Counter(a["category_id"] for a in gt.dataset["annotations"] if not a["iscrowd"])
    found = Counter(r["category_id"] for r in kept)
    recall = {c: found[c] / total[c] for c in total}
    rec_thrs = Params(iouType="segm").recThrs
    ap = {c: np.count_nonzero(rec_thrs <= r) / len(rec_thrs) if r else 0.0
          for c, r in recall.items()}
    assert out["stats"]["AR100"] == pytest.approx(np.mean(list(recall.values())), abs=1e-12)
    assert out["stats"]["AR100"] < 0.6
    assert out["stats"]["AP"] == pytest.approx(np.mean(list(ap.values())), abs=1e-12)
    assert {c: v for c, v in out["per_category"].items() if c in total} == pytest.approx(ap, abs=1e-12)


def square_gt() -> COCO:
    """One 200x200 image with one large square of category 1; category 2 has no ground truth."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 200, "width": 200, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "unused"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 22500.0,
                         "bbox": [20, 20, 150, 150],
                         "segmentation": [[20, 20, 170, 20, 170, 170, 20, 170]]}],
    }
    coco.createIndex()
    return coco


def test_no_detections_scores_zero_with_natural_minus_ones(gt):
    """-1 exactly where an area range has no ground truth, as with any detections."""
    out = evaluate(square_gt(), [])
    assert out["stats"] == {k: (-1.0 if k in ("APs", "APm", "ARs", "ARm") else 0.0) for k in STAT_KEYS}
    assert out["per_category"] == {1: 0.0, 2: -1.0}
    assert out["num_detections"] == 0
    mask = np.zeros((1, 200, 200), bool)
    mask[0, 20:170, 20:170] = True
    found = evaluate(square_gt(), encode_instances(1, mask, [1.0], [1]))["stats"]
    assert [v == -1 for v in found.values()] == [v == -1 for v in out["stats"].values()]

    tiny = evaluate(gt, [])["stats"]
    assert tiny["AP"] == 0.0 and set(tiny.values()) <= {0.0, -1.0}


def test_bbox_in_segm_results_is_ignored(gt, perfect):
    """Records with boxes, as a detector gives them: false positives with small masks but
    whole-image boxes, ranked above the true ones. loadRes would take every area from the box
    (so these would count as large) once the first record has a bbox."""
    true_positives = [{**r, "score": 0.9} for r in add_boxes(perfect)]
    false_positives = []
    for image_id in gt.getImgIds()[:20]:
        info = gt.imgs[image_id]
        mask = np.zeros((1, info["height"], info["width"]), bool)
        mask[0, :10, :10] = True
        category_id = gt.imgToAnns[image_id][0]["category_id"]
        record, = encode_instances(image_id, mask, [0.99], [category_id])
        false_positives.append({**record, "bbox": [0, 0, info["width"], info["height"]]})
    with_boxes = true_positives + false_positives
    without = [{k: v for k, v in r.items() if k != "bbox"} for r in with_boxes]

    ours = evaluate(gt, with_boxes)["stats"]
    assert ours == evaluate(gt, without)["stats"] == raw_pycocotools_stats(without)
    raw = raw_pycocotools_stats(with_boxes)  # the trap: small false positives filed as large
    assert raw["APs"] > ours["APs"] and raw["APl"] < ours["APl"]


def _set(key, value):
    return lambda r: r.__setitem__(key, value)


@pytest.mark.parametrize("corrupt, message", [
    (_set("image_id", 123456789), "record 3 image_id 123456789 is not an image of the ground truth"),
    (_set("category_id", 0), "record 3 category_id 0 is not a category of the ground truth"),
    (lambda r: r.pop("segmentation"), "record 3 has no 'segmentation'"),
    (lambda r: r.pop("score"), "record 3 has no 'score'"),
    (_set("score", math.nan), "record 3 score nan is not a finite number"),
    (_set("segmentation", [[0, 0, 5, 0, 5, 5]]), "record 3 segmentation is not a compressed RLE"),
    (lambda r: r["segmentation"].__setitem__("size", [10, 10]), "record 3 mask size [10, 10]"),
])
def test_bad_records_are_named(gt, perfect, corrupt, message):
    records = json.loads(json.dumps(perfect[:5]))
    corrupt(records[3])
    with pytest.raises(PepError, match=f"^results: {re.escape(message)}"):
        evaluate(gt, records)


def test_bad_results_files_are_named(gt, perfect, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,', encoding="utf-8")
    with pytest.raises(PepError, match=f"{re.escape(str(broken))}: results file is not valid JSON"):
        evaluate(gt, broken)
    not_list = tmp_path / "dict.json"
    not_list.write_text('{"annotations": []}', encoding="utf-8")
    with pytest.raises(PepError, match=f"{re.escape(str(not_list))}: .*JSON list of records, not a dict"):
        evaluate(gt, not_list)
    bad_record = tmp_path / "bad_record.json"
    bad_record.write_text(json.dumps(perfect[:2] + ["oops"]), encoding="utf-8")
    with pytest.raises(PepError, match=f"{re.escape(str(bad_record))}: record 2 is a str, not an object"):
        evaluate(gt, bad_record)
    with pytest.raises(PepError, match="results file not found"):
        evaluate(gt, tmp_path / "missing.json")
    with pytest.raises(PepError, match="unknown iou type 'keypoints'"):
        evaluate(gt, [], "keypoints")


def test_write_submission(perfect, tmp_path):
    records = perfect[:7]
    zip_path = write_submission(records, tmp_path / "submissions", "pep-r50-2")
    name = "detections_test-dev2017_pep-r50-2_results.json"
    assert zip_path == tmp_path / "submissions" / name.replace(".json", ".zip")
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == [name]
        assert json.loads(archive.read(name)) == records
    assert json.loads((zip_path.parent / name).read_text(encoding="utf-8")) == records
    assert sorted(p.name for p in zip_path.parent.iterdir()) == [name, zip_path.name]  # no temp files


@pytest.mark.parametrize("algorithm", ["", "pep r50", "../pep", "pep_r50", "pép"])
def test_write_submission_rejects_bad_algorithm_names(algorithm, tmp_path):
    with pytest.raises(PepError, match="letters, digits and dashes"):
        write_submission([], tmp_path, algorithm)
    assert list(tmp_path.iterdir()) == []


def test_stats_in_percent_keeps_minus_one():
    stats = dict(zip(STAT_KEYS, [0.3195452758576433, 1.0, 0.0, -1.0] * 3))
    percent = stats_in_percent(stats)
    assert tuple(percent) == STAT_KEYS
    assert list(percent.values()) == [31.955, 100.0, 0.0, -1.0] * 3
