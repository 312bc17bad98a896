"""The embedded synthetic set: COCO's layout, exact annotations, real crowds, determinism."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pep.cli import main
from pep.config import PROJECT_ROOT
from pep.data import synth
from pep.errors import PepError


def coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_cocos(small_synth, small_synth_cfg):
    root = small_synth
    for folder in ("train2017", "val2017", "test-dev2017"):
        assert (root / folder).is_dir()
    ann = root / "annotations"
    assert sorted(p.name for p in ann.iterdir()) == [
        "image_info_test-dev2017.json", "instances_train2017.json", "instances_val2017.json"]
    info = json.loads((ann / "image_info_test-dev2017.json").read_text())
    assert "annotations" not in info and len(info["images"]) == small_synth_cfg["num_test_dev"]
    hidden = json.loads((root / synth.PRIVATE_TEST_DEV_GT).read_text())
    assert [i["id"] for i in hidden["images"]] == [i["id"] for i in info["images"]]
    assert len(hidden["annotations"]) > 0

    seen_ids = set()
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        gt = json.loads((ann / f"instances_{folder}.json").read_text())
        assert len(gt["images"]) == small_synth_cfg[f"num_{split}"]
        for rec in gt["images"]:
            with Image.open(root / folder / rec["file_name"]) as im:
                assert im.size == (rec["width"], rec["height"]) and im.format == "JPEG"
            assert rec["id"] not in seen_ids
            seen_ids.add(rec["id"])
        # non-contiguous category ids on purpose, names from params
        assert [(c["id"], c["name"]) for c in gt["categories"]] == [
            (2 * i + 1, name) for i, name in enumerate(small_synth_cfg["classes"])]
        assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"])


def test_area_and_bbox_agree_with_the_masks(small_synth):
    gt = coco(small_synth / "annotations" / "instances_train2017.json")
    checked = 0
    for ann in gt.dataset["annotations"]:
        mask = gt.annToMask(ann)
        rle = mask_utils.encode(np.asfortranarray(mask))
        assert ann["area"] == mask.sum() > 0
        assert ann["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        checked += 1
    assert checked > 50


def test_visible_parts_do_not_overlap(small_synth):
    """Occlusion is drawn: each pixel belongs to at most one (non-crowd) instance."""
    gt = coco(small_synth / "annotations" / "instances_val2017.json")
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        if anns:
            stack = np.stack([gt.annToMask(a) for a in anns]).astype(int)
            assert stack.sum(0).max() <= 1


def _dilate(m: np.ndarray) -> np.ndarray:
    d = m.copy()
    d[1:] |= m[:-1]
    d[:-1] |= m[1:]
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    return d


def test_crowds_really_crowd(small_synth):
    """Most images hold same-class instances that touch and whose boxes overlap, and many
    instances are partly hidden: the cases excavating and purifying are for."""
    gt = coco(small_synth / "annotations" / "instances_train2017.json")
    touching = overlapping = occluded = total = 0
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        masks = [gt.annToMask(a).astype(bool) for a in anns]
        pairs = [(i, j) for i, j in itertools.combinations(range(len(anns)), 2)
                 if anns[i]["category_id"] == anns[j]["category_id"]]
        touching += any((_dilate(masks[i]) & masks[j]).any() for i, j in pairs)
        overlapping += any(mask_utils.iou([anns[i]["bbox"]], [anns[j]["bbox"]], [0])[0][0] > 0
                           for i, j in pairs)
        total += len(anns)
        occluded += sum(isinstance(a["segmentation"], dict) for a in anns)
    n = len(gt.getImgIds())
    assert touching / n >= 0.7, touching / n
    assert overlapping / n >= 0.7, overlapping / n
    assert occluded / total >= 0.3, occluded / total
    assert total / n >= 4


def _nearest_class_colour_rate(root: Path, classes: list[str]) -> float:
    """How often an object's median colour (rim excluded) is nearest its own class's colour."""
    gt = coco(root / "annotations" / "instances_train2017.json")
    palette = np.stack([synth.class_colour(i, len(classes)) for i in range(len(classes))])
    label_of = {synth.category_id(i): i for i in range(len(classes))}
    hits = total = 0
    for ann in gt.dataset["annotations"]:
        mask = gt.annToMask(ann).astype(bool)
        inner = mask & ~_dilate(~mask)
        if ann["iscrowd"] or inner.sum() < 50:
            continue
        with Image.open(root / "train2017" / gt.imgs[ann["image_id"]]["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=float) / 255
        colour = np.median(pixels[inner], axis=0)
        hits += int(np.argmin(((palette - colour) ** 2).sum(1)) == label_of[ann["category_id"]])
        total += 1
    assert total >= 30
    return hits / total


def test_class_colours_tie_colour_to_class_only_when_asked(tmp_path, small_synth_cfg):
    """With class_colour_jitter each class keeps its hue; with null, colour says nothing."""
    solid = {"solid": 1.0, "stripes": 0.0, "checker": 0.0, "speckle": 0.0}
    rates = {}
    for jitter in (0.1, None):
        cfg = {**small_synth_cfg, "class_colour_jitter": jitter, "textures": solid}
        synth.generate(cfg, tmp_path / str(jitter), progress=False)
        rates[jitter] = _nearest_class_colour_rate(tmp_path / str(jitter), cfg["classes"])
    assert rates[0.1] >= 0.95, rates
    assert rates[None] <= 0.6, rates  # chance is 1 / 4 classes


def test_all_three_segmentation_encodings(tmp_path, small_synth_cfg):
    cfg = {**small_synth_cfg, "num_train": 6, "num_val": 1, "num_test_dev": 1, "crowd_region_prob": 1.0}
    synth.generate(cfg, tmp_path / "s", progress=False)
    anns = json.loads((tmp_path / "s/annotations/instances_train2017.json").read_text())["annotations"]
    kinds = {(a["iscrowd"], type(a["segmentation"]).__name__,
              type(a["segmentation"].get("counts")).__name__ if isinstance(a["segmentation"], dict) else None)
             for a in anns}
    assert (0, "list", None) in kinds      # polygon: fully visible objects
    assert (0, "dict", "str") in kinds     # compressed RLE: occluded or cut by the border
    assert (1, "dict", "list") in kinds    # uncompressed RLE: crowd regions, as in COCO


def test_uncompressed_rle_round_trips():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (32, 20)]:
        mask = rng.uniform(size=shape) < 0.4
        mask[0, 0] = True  # runs must start with a (here empty) run of zeros
        rle = synth.uncompressed_rle(mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *shape))
        assert (decoded.astype(bool) == mask).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small_synth_cfg):
    cfg = {**small_synth_cfg, "num_train": 5, "num_val": 2, "num_test_dev": 2}
    synth.generate(cfg, tmp_path / "a", progress=False)
    synth.generate(cfg, tmp_path / "b", progress=False)
    synth.generate({**cfg, "seed": cfg["seed"] + 1}, tmp_path / "c", progress=False)
    a, b, c = (digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_images_do_not_depend_on_the_number_generated(tmp_path, small_synth_cfg):
    """Image k of a split is drawn from its own seed: a bigger set extends a smaller one."""
    synth.generate({**small_synth_cfg, "num_train": 3}, tmp_path / "small", progress=False)
    synth.generate({**small_synth_cfg, "num_train": 6}, tmp_path / "big", progress=False)
    for k in (1, 2, 3):
        name = f"train2017/{k:012d}.jpg"
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes()


def test_an_interrupted_run_leaves_nothing_that_looks_done(tmp_path, small_synth_cfg, monkeypatch):
    real = synth.render_image
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(small_synth_cfg, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path, small_synth_cfg):
    precious = tmp_path / "mydata"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(PepError, match="does not hold a synthetic set"):
        synth.generate(small_synth_cfg, precious, progress=False)
    assert (precious / "notes.txt").read_text() == "mine"


def test_regenerating_replaces_an_earlier_set(tmp_path, small_synth_cfg):
    cfg = {**small_synth_cfg, "num_train": 3, "num_val": 1, "num_test_dev": 1}
    synth.generate({**cfg, "num_train": 5}, tmp_path / "s", progress=False)
    synth.generate(cfg, tmp_path / "s", progress=False)
    assert len(list((tmp_path / "s" / "train2017").iterdir())) == 3


def test_cli_writes_where_params_say(tmp_path, capsys):
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["root"] = "somewhere/synth"
    raw["data"]["synth"].update(num_train=4, num_val=2, num_test_dev=2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert main(["data", "synth", "--params", str(params), "--quiet"]) == 0
    assert "wrote 8 images" in capsys.readouterr().out
    assert len(list((tmp_path / "somewhere/synth/train2017").iterdir())) == 4


@pytest.mark.parametrize("shape", sorted(synth.SHAPES))
def test_every_shape_draws(shape, small_synth_cfg):
    cfg = {**small_synth_cfg, "classes": [shape], "crowd_region_prob": 0.0}
    picture, anns = synth.render_image(np.random.default_rng(1), cfg, 96, 96)
    assert picture.shape == (96, 96, 3) and picture.dtype == np.uint8
    assert anns and all(a["category_id"] == 1 and a["area"] > 0 for a in anns)


def test_crowding_none_is_the_set_from_before_nests(tmp_path, default_params):
    """Level `none` draws exactly the set the generator drew before nests existed: the digest
    below is of images and annotations made by the generator at 28fefaa (info left out, which
    now names the level)."""
    cfg = {**default_params["data"]["synth"], "crowding": "none", "num_train": 4, "num_val": 3, "num_test_dev": 3}
    synth.generate(cfg, tmp_path / "set", progress=False)
    h = hashlib.sha256()
    for path in sorted((tmp_path / "set").rglob("*")):
        if path.suffix == ".jpg":
            h.update(path.read_bytes())
        elif path.suffix == ".json":
            gt = json.loads(path.read_text())
            assert gt.pop("info")["crowding"] == "none"
            h.update(json.dumps(gt, sort_keys=True).encode())
    assert h.hexdigest() == "1fef501a970bf78c56a7ae013e58833bc9072edcf28b855a600785fd42ba8211"
