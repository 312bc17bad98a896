"""`pep figures`: the three PNGs from handmade pipeline outputs on the small synthetic set, and
the choice of the qualitative images."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from pep import evaluation
from pep.cli import main
from pep.config import (PROJECT_ROOT, VARIANTS, load_params, output_path, resolve_data_path, results_path,
                        run_dir)
from pep.data.coco import load_coco
from pep.errors import PepError
from pep.reports import figures

# fraction of the ground-truth instances each fake variant finds, and its false positives per image
QUALITY = {"baseline": (0.5, 2), "excavate": (0.7, 1), "purify": (0.8, 1), "pep": (0.95, 0)}


def make_project(folder: Path, synth_root: Path, seeds: list[int]) -> dict:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["root"] = str(synth_root)
    raw["train"]["seeds"] = seeds
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(folder / "params.yaml")


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def fake_results(gt, variant: str, seed: int) -> list[dict]:
    """Ground-truth masks, some dropped, plus shifted copies as false positives."""
    found, false = QUALITY[variant]
    rng = np.random.default_rng([VARIANTS.index(variant), seed])
    out = []
    for image_id in gt.getImgIds():
        anns = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
        for ann in anns:
            if rng.random() < found:
                out.append({"image_id": image_id, "category_id": ann["category_id"],
                            "segmentation": encode(gt.annToMask(ann)), "score": float(rng.uniform(0.4, 1))})
        for ann in anns[:false]:
            shifted = np.roll(gt.annToMask(ann), (25, 25), axis=(0, 1))
            out.append({"image_id": image_id, "category_id": ann["category_id"],
                        "segmentation": encode(shifted), "score": float(rng.uniform(0.3, 0.9))})
    return out


def fake_log(cfg: dict, variant: str, seed: int) -> str:
    switches = cfg["variants"][variant]
    terms = ["loss_sem", "loss_mask"] + ["loss_exc", "loss_exc_cls"] * switches["excavate"] \
        + ["loss_pur"] * switches["purify"]
    rng = np.random.default_rng([VARIANTS.index(variant), seed, 1])
    lines = []
    for it in range(10, 310, 10):
        values = {t: float(np.exp(-it / 150) + 0.2 + 0.05 * rng.random()) for t in terms}
        lines.append(json.dumps({"iteration": it, "epoch": it / 75, "loss": sum(values.values()), **values,
                                 "lr": 0.002 * 0.5 * (1 + math.cos(math.pi * it / 300)),
                                 "images_per_s": 14.0}))
    return "\n".join(lines) + "\n"


def write_outputs(cfg: dict, variants: list[str]) -> None:
    """What `pep train` and `pep evaluate` leave behind, made by hand (no model)."""
    gt = load_coco(resolve_data_path(cfg, "val_annotations"))
    seeds = cfg["train"]["seeds"]
    for variant in variants:
        per_seed = {}
        for seed in seeds:
            folder = run_dir(cfg, variant, seed)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "train_log.jsonl").write_text(fake_log(cfg, variant, seed))
            results = fake_results(gt, variant, seed)
            results_path(cfg, variant, seed, "val").parent.mkdir(parents=True, exist_ok=True)
            results_path(cfg, variant, seed, "val").write_text(json.dumps(results))
            per_seed[seed] = evaluation.stats_in_percent(evaluation.evaluate(gt, results, "segm")["stats"])
        metrics = {k: statistics.mean(s[k] for s in per_seed.values()) for k in evaluation.STAT_KEYS}
        metrics.update(variant=variant, split="val", seeds=seeds, images_seen=2400)
        if len(seeds) > 1:
            metrics["per_seed"] = {str(s): v for s, v in per_seed.items()}
            metrics["std"] = {k: statistics.stdev(v[k] for v in per_seed.values())
                              for k in evaluation.STAT_KEYS}
        folder = output_path(cfg, "metrics", variant)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "val.json").write_text(json.dumps(metrics))


def assert_png(path: Path, size_inches: tuple[float, float]) -> None:
    assert path.stat().st_size > 20_000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (round(size_inches[0] * figures.DPI), round(size_inches[1] * figures.DPI))
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10  # drawn on, not a blank canvas


def assert_grid_png(path: Path, rows: int, cols: int) -> None:
    """Rows follow the images' aspect ratios: the height lies between all-wide and all-tall."""
    with Image.open(path) as img:
        width, height = img.size
    assert width == round(figures.QUALITATIVE_CELL * cols * figures.DPI)
    low, high = (figures.qualitative_size(cols, [a] * rows)[1] * figures.DPI for a in (0.5, 2.0))
    assert low <= height <= high
    assert_png(path, (width / figures.DPI, height / figures.DPI))


def test_figures_of_four_variants_one_seed(tmp_path, small_synth, capsys):
    cfg = make_project(tmp_path, small_synth, seeds=[0])
    write_outputs(cfg, list(VARIANTS))
    assert main(["figures", "--params", str(tmp_path / "params.yaml"), "--images", "3"]) == 0
    folder = tmp_path / "reports" / "figures"
    names = ("training_curves", "ap_per_variant", "qualitative")
    csv = tmp_path / "reports" / "plots" / "training_curves.csv"
    assert capsys.readouterr().out.splitlines() == [f"wrote {csv}", *(f"wrote {folder / name}.png" for name in names)]
    curves = pd.read_csv(csv, index_col="iteration")
    assert list(curves.columns) == list(VARIANTS) and len(curves) > 1 and curves.notna().all().all()
    assert_png(folder / "training_curves.png", figures.CURVES_SIZE)
    assert_png(folder / "ap_per_variant.png", figures.AP_SIZE)
    assert_grid_png(folder / "qualitative.png", rows=3, cols=2 + len(VARIANTS))


def test_several_seeds_bootstrap_and_a_missing_variant(tmp_path, small_synth, caplog):
    cfg = make_project(tmp_path, small_synth, seeds=[0, 1, 2])
    write_outputs(cfg, ["baseline", "pep"])
    rng = np.random.default_rng(0)
    boot = {"B": 50, "seed": 0, "image_ids_hash": "0" * 16, "AP": list(rng.normal(40, 2, 50))}
    (output_path(cfg, "metrics", "pep") / "val_bootstrap.json").write_text(json.dumps(boot))
    with caplog.at_level(logging.WARNING, logger="pep.reports.figures"):
        paths = figures.make_figures(cfg, score_threshold=0.3, num_images=2)
    missing = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(missing) == 2 and all(str(output_path(cfg, "metrics")) in m for m in missing)
    assert any("excavate" in m for m in missing) and any("purify" in m for m in missing)
    assert_png(paths[1], figures.CURVES_SIZE)
    assert_png(paths[2], figures.AP_SIZE)
    assert_grid_png(paths[3], rows=2, cols=4)


def test_no_metrics_is_an_error_naming_the_folder(tmp_path, small_synth, capsys):
    cfg = make_project(tmp_path, small_synth, seeds=[0])
    with pytest.raises(PepError, match=str(output_path(cfg, "metrics"))):
        figures.make_figures(cfg)
    assert main(["figures", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "no metrics" in capsys.readouterr().err


def test_a_broken_training_log_names_file_and_line(tmp_path, small_synth):
    cfg = make_project(tmp_path, small_synth, seeds=[0])
    write_outputs(cfg, ["pep"])
    log_file = run_dir(cfg, "pep", 0) / "train_log.jsonl"
    log_file.write_text(log_file.read_text() + "{not json\n")
    with pytest.raises(PepError, match=r"train_log\.jsonl: line 31 is not valid JSON"):
        figures.make_figures(cfg)


@pytest.fixture(scope="module")
def val_gt(small_synth):
    return load_coco(small_synth / "annotations" / "instances_val2017.json")


def perfect(gt, image_ids) -> dict[int, list[dict]]:
    return {i: [{"image_id": i, "category_id": a["category_id"], "segmentation": encode(gt.annToMask(a)),
                 "score": 0.9} for a in gt.imgToAnns[i] if not a["iscrowd"]] for i in image_ids}


def objects(gt, image_id) -> int:
    return sum(not a["iscrowd"] for a in gt.imgToAnns[image_id])


def test_match_image_counts_found_missed_and_false(val_gt):
    image_id = max(val_gt.getImgIds(), key=lambda i: objects(val_gt, i))
    dets = perfect(val_gt, [image_id])[image_id]
    n = len(dets)
    assert n >= 3
    fp = {**dets[0], "segmentation": encode(np.roll(mask_utils.decode(figures._rle(dets[0]["segmentation"])),
                                                    (30, 30), axis=(0, 1)))}
    low = {**dets[1], "score": 0.1}  # under the threshold: as if it were not there
    found = figures.match_image(val_gt, image_id, dets[2:] + [fp, low], score_threshold=0.3)
    assert (found["tp"], found["fn"], found["fp"]) == (n - 2, 2, 1)
    assert found["f1"] == pytest.approx(2 * (n - 2) / (2 * (n - 2) + 1 + 2))


def test_select_images_prefers_crowded_images_where_variants_differ(val_gt):
    ids = val_gt.getImgIds()
    sizes = {i: objects(val_gt, i) for i in ids}
    median = float(np.median(list(sizes.values())))
    by_crowd = sorted(ids, key=lambda i: (-sizes[i], i))
    # the least crowded of the crowded half: never first on crowdedness alone
    target = max((i for i in ids if sizes[i] >= median), key=lambda i: (-sizes[i], i))
    assert target != by_crowd[0]
    good = perfect(val_gt, ids)
    worse = {**good, target: good[target][: len(good[target]) // 3]}
    assert figures.select_images(val_gt, {"baseline": worse, "pep": good}, 2, 0.3) == [target, by_crowd[0]]
    # a sparse image where the variants differ more still loses to the crowded ones
    sparse = min(ids, key=lambda i: (sizes[i], i))
    assert sizes[sparse] < median
    worse[sparse] = []
    assert figures.select_images(val_gt, {"baseline": worse, "pep": good}, 1, 0.3) == [target]
    # no disagreement: the most crowded images, deterministic
    same = {"baseline": good, "pep": good}
    assert figures.select_images(val_gt, same, 3, 0.3) == by_crowd[:3]
    assert figures.select_images(val_gt, same, 3, 0.3) == figures.select_images(val_gt, same, 3, 0.3)
