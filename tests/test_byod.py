"""Bring your own data: a COCO-format set anywhere on disk, and the quirks of labelling tools'
exports (category id 0, image and annotation ids from 0, sub-folder prefixes in file_name,
images missing on disk), each on a modified copy of tiny_coco's val annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_COCO, perfect_results, write
from pep.cli import main
from pep.config import PROJECT_ROOT, load_params
from pep.data.coco import CocoInstances, InputSize, build_dataset, load_coco
from pep.errors import PepError
from pep.evaluation import evaluate

VAL_JSON = TINY_COCO / "annotations" / "instances_val2017.json"
VAL_IMAGES = TINY_COCO / "val2017"
SMALL = InputSize((64,), 96)


def tiny_val() -> dict:
    return json.loads(VAL_JSON.read_text())


def custom_params(tmp_path: Path, **data_keys) -> Path:
    """A params file for data.source custom, with the given data.* keys."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"].update(source="custom", num_workers=0, **data_keys)
    params["data"]["input"].update(train_min_size=[64], test_min_size=64, max_size=96)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_custom_set_anywhere_on_disk(tmp_path, capsys):
    """Absolute annotation and image paths (data.root unused), the class names from the file."""
    from pep.model.detector import build_model

    data = tiny_val()
    data["categories"] = [{**c, "name": f"my_{c['name']}"} for c in data["categories"]]
    ann = write(tmp_path / "labels" / "val.json", data)
    params = custom_params(tmp_path, root=str(tmp_path / "unused"),
                           train_annotations=str(ann), train_images=str(VAL_IMAGES),
                           val_annotations=str(ann), val_images=str(VAL_IMAGES))
    assert main(["data", "validate", "--annotations", str(ann), "--images", str(VAL_IMAGES), "-q"]) == 0
    assert "OK: can be trained on" in capsys.readouterr().out
    cfg = load_params(params)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(val) == 50 and train.annotation_file == ann
    assert val.class_names[0] == "my_person" and val.category_ids == sorted(c["id"] for c in data["categories"])
    model = build_model(cfg, "pep", val.category_ids)
    assert model.num_classes == 80 and model.category_ids.tolist() == val.category_ids

    # relative keys hang off an absolute data.root
    root = tmp_path / "mydata"
    shutil.copytree(VAL_IMAGES, root / "pictures")
    write(root / "ann" / "val.json", data)
    cfg = load_params(custom_params(tmp_path, root=str(root), val_annotations="ann/val.json",
                                    val_images="pictures"))
    assert build_dataset(cfg, "val").image_dir == root / "pictures"


def test_category_id_zero(tmp_path, capsys):
    data = tiny_val()
    for c in data["categories"]:
        c["id"] -= 1
    for a in data["annotations"]:
        a["category_id"] -= 1
    ann = write(tmp_path / "val.json", data)
    assert main(["data", "validate", "--annotations", str(ann), "--images", str(VAL_IMAGES), "-q"]) == 0
    assert "WARNING category_id_zero" in capsys.readouterr().out
    ds = CocoInstances(ann, VAL_IMAGES, SMALL, train=True)
    assert ds.category_ids[0] == 0 and ds.class_names[0] == "person"
    person_images = {a["image_id"] for a in data["annotations"] if a["category_id"] == 0 and not a["iscrowd"]}
    index = next(i for i, image_id in enumerate(ds.image_ids) if image_id in person_images)
    _, target = ds[index]
    assert 0 in target["labels"].tolist() and ds.label_to_category_id([0]) == [0]
    gt = load_coco(ann)
    assert evaluate(gt, perfect_results(gt.dataset, score=0.9))["stats"]["AP"] == pytest.approx(1.0)


@pytest.fixture
def zero_based(tmp_path) -> tuple[Path, dict]:
    """Image, annotation and category ids from 0, as Label Studio and several converters write."""
    data = tiny_val()
    image_ids = {im["id"]: i for i, im in enumerate(data["images"])}
    for im in data["images"]:
        im["id"] = image_ids[im["id"]]
    for i, a in enumerate(data["annotations"]):
        a.update(id=i, image_id=image_ids[a["image_id"]], category_id=a["category_id"] - 1)
    for c in data["categories"]:
        c["id"] -= 1
    return write(tmp_path / "val.json", data), data


def test_ids_from_zero_everywhere(zero_based, capsys):
    ann, data = zero_based
    assert main(["data", "validate", "--annotations", str(ann), "--images", str(VAL_IMAGES), "-q"]) == 0
    assert "WARNING annotation_id_zero" in capsys.readouterr().out
    ds = CocoInstances(ann, VAL_IMAGES, SMALL, train=False)
    assert ds.image_ids[0] == 0
    _, target = ds[0]
    assert target["image_id"] == 0
    assert len(target["labels"]) == sum(1 for a in data["annotations"] if a["image_id"] == 0 and not a["iscrowd"])

    gt = load_coco(ann)
    perfect = perfect_results(gt.dataset, score=0.9)
    # annotation id 0 would make pycocotools count the detection matching it as a false positive
    assert evaluate(gt, perfect)["stats"]["AP"] == pytest.approx(1.0)
    only_zero = evaluate(gt, [r for r in perfect if r["image_id"] == 0], image_ids=[0])
    assert only_zero["num_images"] == 1 and only_zero["num_detections"] > 0
    assert only_zero["stats"]["AP"] == pytest.approx(1.0)


def test_ids_from_zero_through_the_model(zero_based):
    """Prediction records of an (untrained) model carry image id 0 and category ids from the file."""
    from pep.engine.evaluate import predict
    from pep.model.detector import build_model

    ann, _ = zero_based
    cfg = load_params(PROJECT_ROOT / "params.yaml", profile="default")
    cfg["data"]["num_workers"] = 0
    cfg["model"]["perceive"]["score_threshold"] = 0.0  # an untrained model must still output something
    cfg["model"]["inference"]["score_threshold"] = 0.0
    ds = CocoInstances(ann, VAL_IMAGES, SMALL, train=False)
    ds.image_ids = ds.image_ids[:2]
    torch.manual_seed(0)
    model = build_model(cfg, "pep", ds.category_ids).eval()
    results, _ = predict(model, ds, cfg, torch.device("cpu"), progress=False)
    assert {r["image_id"] for r in results} <= {0, 1} and any(r["image_id"] == 0 for r in results)
    assert {r["category_id"] for r in results} <= set(ds.category_ids)
    scored = evaluate(load_coco(ann), results, image_ids=[0, 1])
    assert scored["num_images"] == 2 and scored["num_detections"] == len(results)


@pytest.mark.parametrize("prefix", ["val2017/", "images/"])
def test_file_name_with_a_sub_folder_prefix(tmp_path, capsys, prefix):
    data = tiny_val()
    for im in data["images"]:
        im["file_name"] = prefix + im["file_name"]
    ann = write(tmp_path / "val.json", data)
    first = data["images"][0]["file_name"]  # validate goes in file order, the loader by id
    lowest = min(data["images"], key=lambda im: im["id"])["file_name"]

    assert main(["data", "validate", "--annotations", str(ann), "--images", str(VAL_IMAGES), "-q"]) == 1
    out = capsys.readouterr().out
    assert f"'file_name' {first!r} is not in {VAL_IMAGES}" in out
    assert f"strip the prefix {prefix!r} from the 'file_name' fields" in out
    with pytest.raises(PepError, match=f"50 of 50 image file.* missing in {VAL_IMAGES}: {lowest!r}") as err:
        CocoInstances(ann, VAL_IMAGES, SMALL, train=False)
    assert "strip the prefix" in str(err.value)

    if prefix == "val2017/":  # the folder above val2017/ resolves the names as they are
        hint = f"or give the folder that holds val2017/ as the images folder: {TINY_COCO}"
        assert hint in out and hint in str(err.value)
        assert main(["data", "validate", "--annotations", str(ann), "--images", str(TINY_COCO), "-q"]) == 0
        ds = CocoInstances(ann, TINY_COCO, SMALL, train=False)
        assert ds[0][0].shape[0] == 3
    else:
        assert "images folder" not in str(err.value)


def test_images_missing_on_disk(tmp_path, capsys):
    images = tmp_path / "val2017"
    shutil.copytree(VAL_IMAGES, images)
    data = tiny_val()
    gone = [data["images"][3]["file_name"], data["images"][17]["file_name"]]
    for name in gone:
        (images / name).unlink()
    ann = write(tmp_path / "val.json", data)

    assert main(["data", "validate", "--annotations", str(ann), "--images", str(images), "-q"]) == 1
    out = capsys.readouterr().out
    assert "ERROR image_missing_on_disk: 2" in out and all(repr(name) in out for name in gone)
    assert out.strip().splitlines()[-1].startswith("NOT TRAINABLE")

    cfg = load_params(custom_params(tmp_path, root=str(tmp_path), val_annotations="val.json",
                                    val_images="val2017"))
    with pytest.raises(PepError) as err:
        build_dataset(cfg, "val")
    message = str(err.value)
    assert "2 of 50 image file(s) missing" in message and all(repr(name) in message for name in gone)
    assert "pep data validate" in message
