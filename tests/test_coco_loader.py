"""Reading COCO-format folders: real COCO (tiny_coco) and the synthetic set."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from conftest import TINY_COCO
from pep.data.coco import Collate, CocoInstances, InputSize, build_dataset, collate
from pep.errors import PepError

NO_RESIZE = InputSize((16,), 100_000)  # see `native`


def native(ann_file, image_dir, **kw) -> CocoInstances:
    """A dataset that keeps every image at its own size: shorter side set to its own length."""
    ds = CocoInstances(ann_file, image_dir, NO_RESIZE, **kw)
    return ds


def keep_size(ds: CocoInstances, index: int) -> CocoInstances:
    info = ds.coco.imgs[ds.image_ids[index]]
    ds.transforms = InputSize((min(info["height"], info["width"]),), 100_000).transforms()
    return ds


def quiet_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.parametrize("split", ["train", "val"])
def test_tiny_coco_every_image_and_instance(split):
    ann_file = TINY_COCO / "annotations" / f"instances_{split}2017.json"
    raw = json.loads(ann_file.read_text())
    ds = CocoInstances(ann_file, TINY_COCO / f"{split}2017", InputSize((320,), 512), train=False)
    assert len(ds) == len(raw["images"])
    assert ds.category_ids == sorted(c["id"] for c in raw["categories"])
    assert ds.class_names[0] == "person" and ds.label_to_category_id([0, 1]) == ds.category_ids[:2]
    n_instances = n_crowd_images = n_empty = 0
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = target["size"]
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        assert abs(min(h, w) - 320) <= 1 or max(h, w) == 512  # torchvision floors
        assert target["masks"].shape[1:] == (h, w) and target["masks"].dtype == torch.uint8
        assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["masks"])
        assert target["boxes"].shape == (len(target["labels"]), 4)
        anns = [a for a in raw["annotations"] if a["image_id"] == target["image_id"]]
        assert len(target["labels"]) == sum(not a["iscrowd"] for a in anns)
        assert [ds.category_ids[l] for l in target["labels"]] == [a["category_id"] for a in anns if not a["iscrowd"]]
        n_instances += len(target["labels"])
        n_crowd_images += bool(target["ignore_mask"].any())
        n_empty += not anns
    assert n_instances == sum(not a["iscrowd"] for a in raw["annotations"])
    assert n_crowd_images == len({a["image_id"] for a in raw["annotations"] if a["iscrowd"]}) > 0
    assert n_empty >= 1  # tiny_coco has images without annotations; they load with no instances


def test_masks_equal_pycocotools_decoding_at_native_size():
    """Polygons and uncompressed crowd RLE of real COCO, decoded exactly as pycocotools does."""
    ann_file = TINY_COCO / "annotations" / "instances_val2017.json"
    gt = quiet_coco(ann_file)
    ds = native(ann_file, TINY_COCO / "val2017", train=False)
    crowd_image = next(a["image_id"] for a in gt.dataset["annotations"] if a["iscrowd"])
    for index in (0, ds.image_ids.index(crowd_image)):
        _, target = keep_size(ds, index)[index]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=target["image_id"]))
        expected = [gt.annToMask(a) for a in anns if not a["iscrowd"]]
        assert target["size"] == target["orig_size"]
        assert np.array_equal(target["masks"].numpy(), np.stack(expected))
        crowd = np.zeros(target["orig_size"], np.uint8)
        for a in anns:
            if a["iscrowd"]:
                crowd |= gt.annToMask(a)
        assert np.array_equal(target["ignore_mask"].numpy(), crowd)


def test_synthetic_set_polygons_and_compressed_rle(small_synth):
    ann_file = small_synth / "annotations" / "instances_train2017.json"
    gt = quiet_coco(ann_file)
    ds = native(ann_file, small_synth / "train2017", train=False)
    assert ds.category_ids == [1, 3, 5, 7] and ds.class_names == ["circle", "square", "triangle", "star"]
    kinds = set()
    for index in range(4):
        _, target = keep_size(ds, index)[index]
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=target["image_id"])) if not a["iscrowd"]]
        kinds |= {type(a["segmentation"]).__name__ for a in anns}
        assert np.array_equal(target["masks"].numpy(), np.stack([gt.annToMask(a) for a in anns]))
        assert target["labels"].tolist() == [ds.label_of[a["category_id"]] for a in anns]
        boxes = torch.tensor([a["bbox"] for a in anns])
        boxes[:, 2:] += boxes[:, :2]
        assert torch.equal(target["boxes"], boxes.float())
    assert kinds == {"list", "dict"}


def test_test_dev_image_info_has_images_only(small_synth):
    cfg_like = small_synth / "annotations" / "image_info_test-dev2017.json"
    ds = CocoInstances(cfg_like, small_synth / "test-dev2017", InputSize((128,), 192), train=False,
                       with_annotations=False)
    image, target = ds[0]
    assert image.shape[0] == 3 and target["masks"].shape[0] == 0 and target["labels"].numel() == 0


def test_build_dataset_follows_params(small_synth, default_params):
    cfg = {**default_params, "data": {**default_params["data"], "root": str(small_synth)}}
    train = build_dataset(cfg, "train")
    assert train.train and len(train) <= 24
    val = build_dataset(cfg, "val")
    image, target = val[0]
    assert abs(min(target["size"]) - cfg["data"]["input"]["test_min_size"]) <= 1 or \
        max(target["size"]) == cfg["data"]["input"]["max_size"]
    assert len(build_dataset(cfg, "test-dev")) == 6
    with pytest.raises(PepError, match="unknown split 'test'"):
        build_dataset(cfg, "test")


@pytest.fixture
def edited_tiny_val(tmp_path):
    """A copy of tiny_coco val whose annotation file the test edits."""
    root = tmp_path / "coco"
    shutil.copytree(TINY_COCO / "val2017", root / "val2017")
    raw = json.loads((TINY_COCO / "annotations" / "instances_val2017.json").read_text())

    def write(mutate=None):
        data = json.loads(json.dumps(raw))
        if mutate:
            mutate(data)
        path = root / "instances.json"
        path.write_text(json.dumps(data))
        return path, root / "val2017", data
    return write


def test_degenerate_annotations_dropped_in_training_only(edited_tiny_val, caplog):
    def add_degenerate(data):
        first = data["annotations"][0]
        data["annotations"] += [
            {**first, "id": 10**9, "segmentation": [[10, 10, 20, 20]]},           # 2 points
            {**first, "id": 10**9 + 1, "area": 0.0, "bbox": [5, 5, 0, 0]},        # zero area
        ]
    path, images, data = edited_tiny_val(add_degenerate)
    with caplog.at_level(logging.INFO, logger="pep.data.coco"):
        train = CocoInstances(path, images, InputSize((320,), 512), train=True)
    assert train.dropped == {"polygon with fewer than 3 points": 1, "zero area": 1}
    assert "dropped 2 degenerate annotation(s)" in caplog.text
    first_image = data["annotations"][0]["image_id"]
    n_real = sum(1 for a in data["annotations"][:-2] if a["image_id"] == first_image and not a["iscrowd"])
    evaluation = CocoInstances(path, images, InputSize((320,), 512), train=False)
    idx = evaluation.image_ids.index(first_image)
    assert len(evaluation[idx][1]["labels"]) == n_real + 2  # nothing filtered for evaluation
    assert len(train[train.image_ids.index(first_image)][1]["labels"]) <= n_real


def test_skip_empty_in_training(edited_tiny_val):
    path, images, data = edited_tiny_val()
    with_anns = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    ds = CocoInstances(path, images, InputSize((320,), 512), train=True, skip_empty=True)
    assert set(ds.image_ids) == with_anns and len(ds) < len(data["images"])


def test_category_id_zero_and_arbitrary_ids_map_back(edited_tiny_val):
    def renumber(data):
        mapping = {c["id"]: i for i, c in enumerate(data["categories"])}  # ids from 0
        for c in data["categories"]:
            c["id"] = mapping[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = mapping[a["category_id"]]
    path, images, data = edited_tiny_val(renumber)
    ds = CocoInstances(path, images, InputSize((320,), 512), train=False)
    assert ds.category_ids[0] == 0 and ds.label_of[0] == 0
    _, target = ds[0]
    anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"] and not a["iscrowd"]]
    assert ds.label_to_category_id(target["labels"]) == [a["category_id"] for a in anns]


def test_flip_moves_image_and_masks_together(small_synth):
    ann_file = small_synth / "annotations" / "instances_val2017.json"
    plain = CocoInstances(ann_file, small_synth / "val2017", InputSize((128,), 192), train=True)
    flipped = CocoInstances(ann_file, small_synth / "val2017", InputSize((128,), 192, flip_prob=1.0), train=True)
    (img_a, tgt_a), (img_b, tgt_b) = plain[0], flipped[0]
    assert torch.equal(img_b, img_a.flip(-1))
    assert torch.equal(tgt_b["masks"], tgt_a["masks"].flip(-1))
    w = tgt_a["size"][1]
    assert torch.equal(tgt_b["boxes"][:, [0, 2]], w - tgt_a["boxes"][:, [2, 0]])


def test_collate_pads_to_a_multiple_and_keeps_content(small_synth):
    ds = CocoInstances(small_synth / "annotations" / "instances_val2017.json", small_synth / "val2017",
                       InputSize((100,), 150), train=False)
    batch = [ds[i] for i in range(3)]
    images, targets = collate(batch, 32)
    assert images.shape[0] == 3 and images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    for (img, tgt), padded in zip(batch, targets):
        h, w = img.shape[-2:]
        assert padded["size"] == (h, w)
        assert torch.equal(images[targets.index(padded), :, :h, :w], img)
        assert images[targets.index(padded), :, h:, :].abs().sum() == 0
        assert padded["masks"].shape[-2:] == images.shape[-2:]
        assert torch.equal(padded["masks"][:, :h, :w], tgt["masks"])
        assert padded["masks"][:, h:, :].sum() == 0 and padded["masks"][:, :, w:].sum() == 0


def test_dataloader_with_worker_processes(small_synth):
    ds = CocoInstances(small_synth / "annotations" / "instances_train2017.json", small_synth / "train2017",
                       InputSize((96, 112, 128), 192, 0.5), train=True, skip_empty=True)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=Collate(32))
    seen = sum(images.shape[0] for images, _ in loader)
    assert seen == len(ds)


def test_missing_or_wrong_size_image_is_named(edited_tiny_val):
    path, images, data = edited_tiny_val()
    ds = CocoInstances(path, images, InputSize((320,), 512), train=False)
    name = data["images"][0]["file_name"]
    (images / name).unlink()
    with pytest.raises(PepError, match=f"{name}: image of image_id {data['images'][0]['id']}.* is missing"):
        ds[ds.image_ids.index(data["images"][0]["id"])]
    Image.new("RGB", (10, 12)).save(images / name)
    with pytest.raises(PepError, match="image is 10x12 but instances.json says"):
        ds[ds.image_ids.index(data["images"][0]["id"])]


def test_unreadable_annotation_file_is_named(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    with pytest.raises(PepError, match="instances.json: annotation file is not valid JSON"):
        CocoInstances(bad, tmp_path, NO_RESIZE, train=False)
    with pytest.raises(PepError, match="annotation file not found"):
        CocoInstances(tmp_path / "nope.json", tmp_path, NO_RESIZE, train=False)
