"""`pep data validate`: good sets pass, and each kind of mistake is named with its record and key.

Bad variants are copies of tiny_coco's val split in tmp_path, corrupted one way each.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pep.cli import main
from pep.data.validate import KINDS, ValidationReport, validate_dataset

SHARED = Path(os.environ.get("PEP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TINY_COCO = SHARED / "data" / "tiny_coco"


@dataclass
class DataSet:
    """A writable copy of a COCO split: its annotation file, image folder and parsed JSON."""

    annotations: Path
    images: Path
    data: dict

    def save(self) -> None:
        self.annotations.write_text(json.dumps(self.data), encoding="utf-8")

    def image_file(self, index: int) -> Path:
        return self.images / self.data["images"][index]["file_name"]

    def ann_index(self, predicate: Callable[[dict], bool]) -> int:
        return next(i for i, a in enumerate(self.data["annotations"]) if predicate(a))


@pytest.fixture
def val(tmp_path) -> DataSet:
    images = tmp_path / "val2017"
    shutil.copytree(TINY_COCO / "val2017", images)
    annotations = tmp_path / "instances_val2017.json"
    shutil.copy(TINY_COCO / "annotations" / "instances_val2017.json", annotations)
    return DataSet(annotations, images, json.loads(annotations.read_text(encoding="utf-8")))


def run_cli(capsys, annotations: Path, images: Path, *extra: str) -> tuple[int, str]:
    code = main(["data", "validate", "--annotations", str(annotations), "--images", str(images),
                 "-q", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def assert_reported(report: ValidationReport, kind: str, *needles: str) -> None:
    """`kind` was found, and one of its examples names every needle (record, key...)."""
    assert kind in report.findings, report.summary()
    examples = report.findings[kind].examples
    assert any(all(n in e for n in needles) for e in examples), (needles, examples)


# --- good data ---

@pytest.mark.parametrize("split", ["val", "train"])
def test_tiny_coco_is_trainable(capsys, split):
    annotations = TINY_COCO / "annotations" / f"instances_{split}2017.json"
    report = validate_dataset(annotations, TINY_COCO / f"{split}2017", progress=False)
    assert report.trainable, report.summary()
    assert report.images_checked
    code, out = run_cli(capsys, annotations, TINY_COCO / f"{split}2017")
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("OK: can be trained on")


def test_tiny_coco_val_counts():
    report = validate_dataset(TINY_COCO / "annotations" / "instances_val2017.json",
                              TINY_COCO / "val2017", progress=False)
    assert report.counts == {"images": 50, "annotations": 382, "non_crowd": 377, "crowd": 5,
                             "categories": 80, "images_without_annotations": 2,
                             "usable_annotations": 377}
    first = report.summary().splitlines()[0]
    assert first.startswith(str(TINY_COCO / "annotations" / "instances_val2017.json"))
    assert "50 images (2 without annotations), 382 annotations (377 non-crowd, 5 crowd)" in first


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_set_is_trainable(capsys, small_synth, split):
    """Its compressed RLEs, uncompressed crowd RLEs and ids 1, 3, 5... all pass."""
    annotations = small_synth / "annotations" / f"instances_{split}2017.json"
    report = validate_dataset(annotations, small_synth / f"{split}2017", progress=False)
    assert report.trainable and not report.findings, report.summary()
    assert run_cli(capsys, annotations, small_synth / f"{split}2017")[0] == 0


def test_file_name_with_existing_sub_folder_is_fine(val):
    sub = val.images / "sub"
    sub.mkdir()
    name = val.data["images"][0]["file_name"]
    val.image_file(0).rename(sub / name)
    val.data["images"][0]["file_name"] = f"sub/{name}"
    val.save()
    assert validate_dataset(val.annotations, val.images, progress=False).findings == {}


# --- bad annotation files: each mutation returns what the example must name ---

def missing_top_level_key(ds: DataSet) -> list[str]:
    del ds.data["categories"]
    return ["top level", "'categories'"]


def top_level_not_object(ds: DataSet) -> list[str]:
    ds.data = [ds.data]  # type: ignore[assignment]
    return ["top level", "should be an object"]


def missing_record_key(ds: DataSet) -> list[str]:
    ann = ds.data["annotations"][7]
    del ann["bbox"]
    return [f"annotations[7] (id {ann['id']})", "'bbox'"]


def string_image_id(ds: DataSet) -> list[str]:
    ann = ds.data["annotations"][3]
    ann["image_id"] = str(ann["image_id"])
    return [f"annotations[3] (id {ann['id']})", "'image_id'", "should be an int"]


def boolean_width(ds: DataSet) -> list[str]:
    ds.data["images"][2]["width"] = True
    return [f"images[2] (id {ds.data['images'][2]['id']})", "'width'", "true"]


def bbox_of_three(ds: DataSet) -> list[str]:
    ann = ds.data["annotations"][5]
    ann["bbox"] = ann["bbox"][:3]
    return [f"annotations[5] (id {ann['id']})", "'bbox'", "4 numbers"]


def flat_polygon(ds: DataSet) -> list[str]:
    i = ds.ann_index(lambda a: not a["iscrowd"])
    ann = ds.data["annotations"][i]
    ann["segmentation"] = ann["segmentation"][0]
    return [f"annotations[{i}] (id {ann['id']})", "'segmentation'", "list of lists"]


def nan_area(ds: DataSet) -> list[str]:
    ds.data["annotations"][0]["area"] = float("nan")
    return [f"annotations[0] (id {ds.data['annotations'][0]['id']})", "'area'", "NaN"]


def duplicate_image_id(ds: DataSet) -> list[str]:
    ds.data["images"][4]["id"] = ds.data["images"][1]["id"]
    return [f"images[4] (id {ds.data['images'][1]['id']})", "images[1]"]


def duplicate_annotation_id(ds: DataSet) -> list[str]:
    ds.data["annotations"][9]["id"] = ds.data["annotations"][2]["id"]
    return [f"annotations[9] (id {ds.data['annotations'][2]['id']})", "annotations[2]"]


def duplicate_category_id(ds: DataSet) -> list[str]:
    ds.data["categories"][3]["id"] = ds.data["categories"][2]["id"]
    return [f"categories[3] (id {ds.data['categories'][2]['id']})", "categories[2]"]


def duplicate_category_name(ds: DataSet) -> list[str]:
    cats = ds.data["categories"]
    cats[1]["name"] = cats[0]["name"]
    return [f"categories[1] (id {cats[1]['id']})", "'name'", repr(cats[0]["name"])]


def unknown_image(ds: DataSet) -> list[str]:
    ds.data["annotations"][11]["image_id"] = 999_999_999
    return [f"annotations[11] (id {ds.data['annotations'][11]['id']})", "'image_id'", "999999999"]


def unknown_category(ds: DataSet) -> list[str]:
    ds.data["annotations"][12]["category_id"] = 1000
    return [f"annotations[12] (id {ds.data['annotations'][12]['id']})", "'category_id'", "1000"]


def rle_size_swapped(ds: DataSet) -> list[str]:
    i = ds.ann_index(lambda a: a["iscrowd"])
    seg = ds.data["annotations"][i]["segmentation"]
    seg["size"] = seg["size"][::-1]
    return [f"annotations[{i}] (id {ds.data['annotations'][i]['id']})", "'segmentation'", "size"]


def rle_counts_too_long(ds: DataSet) -> list[str]:
    i = ds.ann_index(lambda a: a["iscrowd"])
    ds.data["annotations"][i]["segmentation"]["counts"].append(50)
    return [f"annotations[{i}] (id {ds.data['annotations'][i]['id']})", "'segmentation'"]


def compressed_rle_truncated(ds: DataSet) -> list[str]:
    """A compressed RLE whose string lost its tail: decoding it would write past the mask."""
    i = ds.ann_index(lambda a: not a["iscrowd"])
    ann = ds.data["annotations"][i]
    image = next(im for im in ds.data["images"] if im["id"] == ann["image_id"])
    mask = np.zeros((image["height"], image["width"]), np.uint8, order="F")
    mask[10:40, 20:50] = 1
    rle = mask_utils.encode(mask)
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()[:-1]}
    return [f"annotations[{i}] (id {ann['id']})", "'segmentation'"]


def every_annotation_degenerate(ds: DataSet) -> list[str]:
    for ann in ds.data["annotations"]:
        ann["area"] = 0
    return ["annotations", "382"]


@pytest.mark.parametrize("mutate, kind", [
    (missing_top_level_key, "missing_key"),
    (top_level_not_object, "wrong_type"),
    (missing_record_key, "missing_key"),
    (string_image_id, "wrong_type"),
    (boolean_width, "wrong_type"),
    (bbox_of_three, "wrong_type"),
    (flat_polygon, "wrong_type"),
    (nan_area, "wrong_type"),
    (duplicate_image_id, "duplicate_image_id"),
    (duplicate_annotation_id, "duplicate_annotation_id"),
    (duplicate_category_id, "duplicate_category_id"),
    (duplicate_category_name, "duplicate_category_name"),
    (unknown_image, "unknown_image"),
    (unknown_category, "unknown_category"),
    (rle_size_swapped, "rle_size_mismatch"),
    (rle_counts_too_long, "bad_rle"),
    (compressed_rle_truncated, "bad_rle"),
    (every_annotation_degenerate, "no_annotations"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_annotation_error_is_named(capsys, val, mutate, kind):
    needles = mutate(val)
    val.save()
    report = validate_dataset(val.annotations, val.images, progress=False)
    assert KINDS[kind][0] == "error"
    assert_reported(report, kind, *needles)
    assert not report.trainable
    code, out = run_cli(capsys, val.annotations, val.images, "--examples", "100")
    assert code == 1
    assert f"ERROR {kind}: " in out
    assert out.strip().splitlines()[-1].startswith("NOT TRAINABLE: ")


# --- warnings: reported, still trainable ---

def two_point_polygon(ds: DataSet) -> list[str]:
    i = ds.ann_index(lambda a: not a["iscrowd"])
    ds.data["annotations"][i]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]
    return [f"annotations[{i}] (id {ds.data['annotations'][i]['id']})", "'segmentation'", "2 point"]


def zero_area(ds: DataSet) -> list[str]:
    ds.data["annotations"][6]["area"] = 0
    return [f"annotations[6] (id {ds.data['annotations'][6]['id']})", "'area' is 0"]


def zero_width_bbox(ds: DataSet) -> list[str]:
    ds.data["annotations"][8]["bbox"][2] = 0
    return [f"annotations[8] (id {ds.data['annotations'][8]['id']})", "'bbox'"]


def category_id_zero(ds: DataSet) -> list[str]:
    first = ds.data["categories"][0]
    for ann in ds.data["annotations"]:
        if ann["category_id"] == first["id"]:
            ann["category_id"] = 0
    first["id"] = 0
    return ["categories[0] (id 0)", "'id'"]


def odd_polygon(ds: DataSet) -> list[str]:
    i = ds.ann_index(lambda a: not a["iscrowd"])
    ds.data["annotations"][i]["segmentation"][0].append(5.0)
    return [f"annotations[{i}] (id {ds.data['annotations'][i]['id']})", "'segmentation'"]


def duplicate_file_name(ds: DataSet) -> list[str]:
    images = ds.data["images"]
    i = next(i for i, im in enumerate(images[1:], 1)
             if (im["width"], im["height"]) == (images[0]["width"], images[0]["height"]))
    images[i]["file_name"] = images[0]["file_name"]
    return [f"images[{i}] (id {images[i]['id']})", "'file_name'", "images[0]"]


@pytest.mark.parametrize("mutate, kind", [
    (two_point_polygon, "degenerate_segmentation"),
    (zero_area, "degenerate_segmentation"),
    (zero_width_bbox, "degenerate_segmentation"),
    (category_id_zero, "category_id_zero"),
    (odd_polygon, "odd_polygon_length"),
    (duplicate_file_name, "duplicate_file_name"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_warning_is_named_and_still_trainable(capsys, val, mutate, kind):
    needles = mutate(val)
    val.save()
    report = validate_dataset(val.annotations, val.images, progress=False)
    assert KINDS[kind][0] == "warning"
    assert_reported(report, kind, *needles)
    assert report.trainable, report.summary()
    code, out = run_cli(capsys, val.annotations, val.images)
    assert code == 0
    assert f"WARNING {kind}: " in out
    assert out.strip().splitlines()[-1].startswith("OK: can be trained on, ")


# --- the annotation file itself ---

def test_json_syntax_error_gives_line_and_column(capsys, val):
    lines = json.dumps(val.data, indent=1).splitlines()
    lines[5] = lines[5].rstrip(",")  # a missing comma on line 6
    val.annotations.write_text("\n".join(lines), encoding="utf-8")
    report = validate_dataset(val.annotations, val.images, progress=False)
    assert_reported(report, "json_syntax", str(val.annotations), "line 7, column")
    assert not report.trainable
    code, out = run_cli(capsys, val.annotations, val.images)
    assert code == 1 and "ERROR json_syntax: " in out and "could not be read" in out


@pytest.mark.parametrize("name, kind", [("absent.json", "file_not_found"),
                                        ("a_folder", "file_unreadable"),
                                        ("latin1.json", "file_unreadable")])
def test_unreadable_annotation_file(capsys, tmp_path, name, kind):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    report = validate_dataset(tmp_path / name, tmp_path, progress=False)
    assert_reported(report, kind, name)
    assert run_cli(capsys, tmp_path / name, tmp_path)[0] == 1


# --- image files ---

def delete_image(ds: DataSet) -> list[str]:
    ds.image_file(5).unlink()
    return [f"images[5] (id {ds.data['images'][5]['id']})", ds.data["images"][5]["file_name"]]


def resize_image(ds: DataSet) -> list[str]:
    Image.new("RGB", (64, 48)).save(ds.image_file(6), format="JPEG")
    return [f"images[6] (id {ds.data['images'][6]['id']})", "64x48",
            f"{ds.data['images'][6]['width']}x{ds.data['images'][6]['height']}"]


def garbage_image(ds: DataSet) -> list[str]:
    ds.image_file(7).write_bytes(os.urandom(2000))
    return [f"images[7] (id {ds.data['images'][7]['id']})", ds.data["images"][7]["file_name"]]


def sub_folder_prefix(ds: DataSet) -> list[str]:
    name = ds.data["images"][9]["file_name"]
    ds.data["images"][9]["file_name"] = f"images/{name}"
    return [f"images[9] (id {ds.data['images'][9]['id']})", f"'images/{name}'",
            f"found as {name} directly in {ds.images}: strip the prefix"]


def no_image_folder(ds: DataSet) -> list[str]:
    shutil.rmtree(ds.images)
    return [str(ds.images)]


@pytest.mark.parametrize("mutate, kind", [
    (delete_image, "image_missing_on_disk"),
    (resize_image, "image_size_mismatch"),
    (garbage_image, "image_unreadable"),
    (sub_folder_prefix, "image_missing_on_disk"),
    (no_image_folder, "image_dir_not_found"),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_image_file_error_is_named(capsys, val, mutate, kind):
    needles = mutate(val)
    val.save()
    report = validate_dataset(val.annotations, val.images, progress=False)
    assert_reported(report, kind, *needles)
    assert not report.trainable
    code, out = run_cli(capsys, val.annotations, val.images)
    assert code == 1 and f"ERROR {kind}: " in out
    # without opening images, the annotation file alone is fine
    skipped = validate_dataset(val.annotations, val.images, check_images=False, progress=False)
    assert skipped.trainable and not skipped.images_checked
    assert "image files not checked" in skipped.summary()


# --- output ---

def test_report_json_matches_the_verdict(capsys, val, tmp_path):
    out_file = tmp_path / "out" / "report.json"
    assert run_cli(capsys, val.annotations, val.images, "--report", str(out_file))[0] == 0
    good = json.loads(out_file.read_text(encoding="utf-8"))
    assert good["trainable"] is True and good["errors"] == 0 and good["problems"] == {}
    assert good["counts"]["images"] == 50 and good["images_checked"] is True

    for i in range(5):
        val.data["annotations"][i]["image_id"] = -1
    zero_area(val)
    val.save()
    assert run_cli(capsys, val.annotations, val.images, "--report", str(out_file))[0] == 1
    bad = json.loads(out_file.read_text(encoding="utf-8"))
    assert bad["trainable"] is False and bad["errors"] == 5 and bad["warnings"] == 1
    assert bad["problems"]["unknown_image"]["severity"] == "error"
    assert bad["problems"]["unknown_image"]["count"] == 5
    assert len(bad["problems"]["unknown_image"]["examples"]) == 5
    assert bad["problems"]["degenerate_segmentation"]["severity"] == "warning"


def test_summary_limits_examples(capsys, val):
    for i in range(5):
        val.data["annotations"][i]["image_id"] = -1
    val.save()
    code, out = run_cli(capsys, val.annotations, val.images, "--examples", "2")
    lines = out.strip().splitlines()
    block = lines.index(next(line for line in lines if line.startswith("ERROR unknown_image: 5 ")))
    assert lines[block + 1].strip().startswith("annotations[0] (id ")
    assert lines[block + 2].strip().startswith("annotations[1] (id ")
    assert lines[block + 3].strip() == "... and 3 more"
    assert lines[-1] == "NOT TRAINABLE: 5 error(s)"
