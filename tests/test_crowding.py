"""The crowding figures (pep.data.crowding) on hand-built sets with known answers, the nests
that make the synthetic set crowded for perceiving, and `pep data crowding`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO

from pep.cli import main
from pep.config import PROJECT_ROOT
from pep.data import synth
from pep.data.crowding import hidden_instances, overlapping_same_class

SHARED_TINY_COCO = PROJECT_ROOT.parent / "shared" / "data" / "tiny_coco"


def square(cx: float, cy: float, side: float) -> list[float]:
    h = side / 2
    return [cx - h, cy - h, cx + h, cy - h, cx + h, cy + h, cx - h, cy + h]


def write_coco(root: Path, images: list[list[tuple[int, list[float]]]], size: int = 144) -> None:
    """A COCO-layout val split: one grey `size` x `size` image per entry, each (category, polygon)
    an instance."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    imgs, anns = [], []
    for image_id, instances in enumerate(images, 1):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(root / "val2017" / name)
        imgs.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for category, polygon in instances:
            xs, ys = polygon[0::2], polygon[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                         "segmentation": [polygon], "area": box[2] * box[3], "bbox": box})
    gt = {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(gt))


def test_hand_built_crowding_figures(tmp_path, default_params):
    """At the default profile's grids (144 px, padded to 160: cells of 10 px at S=16, 20 px at S=8),
    a 60 px square centred on a 50 px one has no cell of its own, whatever their classes, and the
    pair's boxes overlap by IoU 2500/3600 = 0.69; a square elsewhere owns its cells."""
    write_coco(tmp_path / "set", [
        [(1, square(72, 72, 60)), (1, square(72, 72, 50)), (3, square(30, 110, 30))],
        [(1, square(72, 72, 60)), (3, square(72, 72, 50))],   # hidden, but of another class: no pair
    ])
    cfg = copy.deepcopy(default_params)
    cfg["data"].update(source="custom", root=str(tmp_path / "set"))
    figures = hidden_instances(cfg, "val")
    assert figures == {"instances": 5, "without_own_cell": 2, "share": 0.4, "overlapping_same_class": 2,
                       "overlapping_share": 0.4, "overlapping_pairs": 1, "overlap_iou": 0.5}


def test_overlapping_same_class_pairs():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 10, 4.9]])
    labels = torch.tensor([0, 0, 1, 0, 0])
    pair = overlapping_same_class(boxes, labels)
    # 0-1: IoU 90/110; 0-2: another class; 3: alone; 4 with 0: IoU 0.49, with 1: lower
    assert pair.nonzero().tolist() == [[0, 1], [1, 0]]


@pytest.fixture
def nests_only(small_synth_cfg) -> dict:
    return {**small_synth_cfg, "crowding": "nests", "crowding_levels": {"nests": {
        "crowds_per_image": [0, 0], "loners_per_image": [0, 0], "nest_prob": 1.0, "nests_per_image": [1, 1],
        "nest_depth": [2, 2]}}, "crowd_region_prob": 0.0, "num_train": 1, "num_val": 30, "num_test_dev": 1}


def test_nests_hide_the_larger_object_from_perceiving(tmp_path, default_params, nests_only):
    """A nest is two same-class objects around one centre, both visible; at the default grids
    the larger owns no cell in most nests (measured: 17 of 30), against 0.2% of all instances
    in the set without nests."""
    synth.generate(nests_only, tmp_path / "set", progress=False)
    gt = json.loads((tmp_path / "set" / "annotations" / "instances_val2017.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len(by_image) == 30 and all(len(anns) == 2 for anns in by_image.values())
    gt_api = COCO(str(tmp_path / "set" / "annotations" / "instances_val2017.json"))
    for a, b in by_image.values():
        assert a["category_id"] == b["category_id"]
        centre = lambda ann: np.argwhere(gt_api.annToMask(ann)).mean(0)  # noqa: E731
        assert np.abs(centre(a) - centre(b)).max() < 4, (a["bbox"], b["bbox"])
        assert min(a["area"], b["area"]) >= 300  # both show (a 60 px front square alone covers 1,800 px)
    cfg = copy.deepcopy(default_params)
    cfg["data"]["root"] = str(tmp_path / "set")
    figures = hidden_instances(cfg, "val")
    assert figures["instances"] == 60
    assert 0.3 <= figures["without_own_cell"] / 30 <= 0.9, figures
    assert figures["overlapping_same_class"] >= 40, figures


def test_crowding_command_measures_each_level_and_a_coco_folder(tmp_path, capsys, default_params):
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["synth"].update(num_train=2, num_val=40, num_test_dev=1)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    report = tmp_path / "crowding.json"
    assert main(["data", "crowding", "--params", str(params), "--level", "none", "demo", "-q",
                 "--coco-root", str(SHARED_TINY_COCO), "--report", str(report)]) == 0
    sets = json.loads(report.read_text())["sets"]
    coco = sets.pop(next(k for k in sets if k.startswith("coco ")))
    assert (coco["instances"], coco["without_own_cell"]) == (377, 8)  # tiny_coco val at the coco profile's grids
    assert sets["synth none"]["share"] < 0.03 < 0.08 < sets["synth demo"]["share"], sets
    out = capsys.readouterr().out
    assert "synth     demo:" in out and "own no grid cell" in out


def test_crowding_command_names_an_unknown_level(capsys):
    assert main(["data", "crowding", "--level", "dense", "-q"]) != 0
    err = capsys.readouterr().err
    assert "--level dense" in err and "none, coco, demo, heavy" in err


def test_a_nest_that_cannot_show_enough_ends_and_drops_its_back_objects(tmp_path, nests_only):
    """With min_visible_fraction 1.0 no back object can show enough: growing it stops after a
    few steps and the painter's rule leaves it out, so each image holds the front one alone."""
    synth.generate({**nests_only, "num_val": 5, "min_visible_fraction": 1.0}, tmp_path / "set", progress=False)
    gt = json.loads((tmp_path / "set" / "annotations" / "instances_val2017.json").read_text())
    assert len(gt["images"]) == 5 and len(gt["annotations"]) == 5
