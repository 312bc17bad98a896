"""`pep evaluate` and `pep predict`: a trained variant's predictions, scored with pycocotools.

evaluate (val): results of every seed's model, COCO segm and bbox stats, written as
  metrics/<variant>/val.json            the 12 segm stats in percent (mean over seeds when
                                        there are several, with each seed's beside them), the
                                        bbox stats, and the cost figures the tables need
  metrics/<variant>/val_per_category.json
  results/<variant>/seed<k>/results_val.json   the raw COCO results
predict (test-dev): the COCO server's upload, submissions/<variant>/detections_test-dev2017_
  <algorithm>-<variant>_results.zip, of the first seed's model; where a local ground truth
  exists (the synthetic set keeps one aside), every seed's model is scored as the server would,
  into metrics/<variant>/test-dev.json (mean over seeds, each seed's beside it).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from pep import evaluation
from pep.config import output_path, resolve_data_path, results_path
from pep.config import run_dir as default_run_dir
from pep.data.coco import CocoInstances, Collate, build_dataset, load_coco, scored_categories
from pep.data.synth import PRIVATE_TEST_DEV_GT
from pep.engine.checkpoint import FINAL
from pep.engine.train import load_trained
from pep.errors import PepError
from pep.jsonfile import StagedOutputs
from pep.progress import ProgressLog

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict(model, dataset: CocoInstances, cfg: dict, device: torch.device, progress: bool = True,
            name: str = "predict"):
    """COCO results records for every image of `dataset`, and the seconds spent in the model.

    Progress: tqdm's bar in a terminal (none with progress=False, `--quiet`); in a log, a line
    `name: image i/n ...` every evaluate.progress_every_s seconds and at the end, quiet or not."""
    loader = DataLoader(dataset, batch_size=cfg["evaluate"]["batch_size"], shuffle=False,
                        num_workers=cfg["data"]["num_workers"],
                        collate_fn=Collate(cfg["data"]["input"]["size_divisibility"]))
    results, model_seconds, done = [], 0.0, 0
    with ProgressLog(len(dataset), name, every_s=cfg["evaluate"]["progress_every_s"], unit="image",
                     bar=progress, leave=False) as meter:
        for images, targets in loader:
            started = time.perf_counter()
            outputs = model(images.to(device), targets)
            model_seconds += time.perf_counter() - started
            for out, target in zip(outputs, targets):
                results += evaluation.encode_instances(target["image_id"], out["masks"].cpu(),
                                                       out["scores"].cpu(), out["category_ids"].cpu())
            done += len(targets)
            meter.update(done, len(targets))
    return results, model_seconds


def flops_per_image(model, dataset: CocoInstances, device: torch.device) -> float:
    image, target = dataset[0]
    batch_images, batch_targets = Collate(32)([(image, target)])
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(batch_images.to(device), batch_targets)
    return float(counter.get_total_flops())


def evaluate_variant(cfg: dict, variant: str, seeds: list[int], device="cpu", tracker_factory=None,
                     progress: bool = True) -> dict:
    """Score every seed's model on val; write the metrics files; return the val.json content.

    Everything that can be checked is checked before the first image is predicted: the ground
    truth (validate's checks), every seed's model file and that its categories are the ground
    truth's, that the output folders can be written. The outputs appear together at the end,
    val.json last (StagedOutputs): an interrupted run leaves the previous run's files as they
    were, never a mix."""
    folder = output_path(cfg, "metrics", variant)
    results_files = {seed: results_path(cfg, variant, seed, "val") for seed in seeds}
    outputs = StagedOutputs([*results_files.values(), folder / "val_per_category.json",
                             folder / "val_bootstrap.json", folder / "val.json"], "`pep evaluate`")
    dataset = build_dataset(cfg, "val")
    gt = dataset.coco  # the val file, parsed and checked once
    models = {seed: load_trained(cfg, variant, seed, device) for seed in seeds}
    for seed, (_, final) in models.items():
        _check_categories(final, gt, default_run_dir(cfg, variant, seed) / FINAL)
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    per_seed, per_category, bbox, extras, first_model = {}, {}, {}, {}, None
    bootstrap, resampled, seed_results = cfg["evaluate"]["bootstrap"], {}, {}
    with outputs:
        for seed in seeds:
            model, final = models[seed]
            if first_model is None:  # params and FLOPs are the same for every seed
                first_model = model
            log.info("%s seed %d: predicting %d val images", variant, seed, len(dataset))
            results, seconds = predict(model, dataset, cfg, torch.device(device), progress,
                                       name=f"evaluate {variant} seed {seed} val")
            seed_results[seed] = results
            segm = evaluation.evaluate(gt, results, "segm")
            box = evaluation.evaluate(gt, evaluation.add_boxes(results), "bbox")
            per_seed[seed] = evaluation.stats_in_percent(segm["stats"])
            if bootstrap["resamples"]:
                log.info("%s seed %d: %d bootstrap resamples", variant, seed, bootstrap["resamples"])
                resampled[seed] = evaluation.bootstrap_ap(gt, results, bootstrap["resamples"], bootstrap["seed"])
            bbox[seed] = evaluation.stats_in_percent(box["stats"])
            per_category[seed] = {names[c]: round(100 * ap, 3) if ap >= 0 else -1
                                  for c, ap in segm["per_category"].items()}
            extras[seed] = {"train_time_s": round(final["train_time_s"], 1), "images_seen": final["images_seen"],
                            "infer_ms_per_image": round(1000 * seconds / len(dataset), 2),
                            "detections": segm["num_detections"]}
            log.info("%s seed %d: mask AP %.1f, AP50 %.1f (%d detections on %d images)", variant, seed,
                     per_seed[seed]["AP"], per_seed[seed]["AP50"], segm["num_detections"], len(dataset))

        metrics = _mean_over_seeds(per_seed)
        metrics["bbox"] = _mean_over_seeds(bbox)
        metrics.update({
            "variant": variant, "split": "val", "seeds": list(seeds),
            "params": sum(p.numel() for p in first_model.parameters()),
            "flops_per_image": flops_per_image(first_model, dataset, torch.device(device)),
            "infer_ms_per_image": round(statistics.mean(e["infer_ms_per_image"] for e in extras.values()), 2),
            "train_time_s": round(statistics.mean(e["train_time_s"] for e in extras.values()), 1),
            "images_seen": extras[seeds[0]]["images_seen"],
        })
        if len(seeds) > 1:
            metrics["per_seed"] = {str(s): v for s, v in per_seed.items()}
            metrics["std"] = _std_over_seeds(per_seed)
        for seed, path in results_files.items():
            outputs.write_json(path, seed_results[seed], indent=None)
        outputs.write_json(folder / "val_per_category.json", per_category[seeds[0]] if len(seeds) == 1
                           else {str(s): v for s, v in per_category.items()})
        if resampled:  # absent when the bootstrap is off: no stale file paired with fresh metrics
            outputs.write_json(folder / "val_bootstrap.json", _bootstrap_record(resampled, seeds))
        outputs.write_json(folder / "val.json", metrics)
        outputs.publish()

    if tracker_factory is not None:  # after publishing: the run logs the files as they are
        for seed in seeds:
            with tracker_factory(seed).start("evaluate") as tracker:
                tracker.log_metrics({**per_seed[seed], **{f"bbox_{k}": v for k, v in bbox[seed].items()},
                                     "infer_ms_per_image": extras[seed]["infer_ms_per_image"]})
                tracker.log_dict({"segm": per_seed[seed], "bbox": bbox[seed],
                                  "per_category": per_category[seed]}, "metrics/val.json")
                tracker.log_artifact(results_files[seed], "results")
    return metrics


def _check_categories(final: dict, gt, path) -> None:
    """A model predicts the category ids it was trained on; each must be a scored category of
    the ground truth, or every result would be refused after the whole inference pass."""
    from pep.errors import PepError

    scored = set(scored_categories(gt))
    foreign = sorted(set(final["category_ids"]) - scored)
    if foreign:
        raise PepError(f"{path}: the model predicts category ids {foreign[:10]} that the ground truth "
                       f"does not score (its categories: {sorted(scored)[:10]}); it was trained on "
                       "another data set: retrain it on this one")


def _bootstrap_record(resampled: dict[int, dict], seeds: list[int]) -> dict:
    """val_bootstrap.json: mask AP (percent) per resample, the mean over seeds of each seed's
    model on the same draw of images."""
    first = resampled[seeds[0]]
    per_draw = zip(*(r["AP"] for r in resampled.values()))
    return {"B": first["B"], "seed": first["seed"], "image_ids_hash": first["image_ids_hash"],
            "seeds": list(seeds), "unit": "percent",
            "AP": [-1 if any(v < 0 for v in draw) else round(100 * statistics.mean(draw), 3) for draw in per_draw]}


def predict_test_dev(cfg: dict, variant: str, seeds: list[int], device="cpu", progress: bool = True) -> dict:
    """The COCO server's submission zip, of the first seed's model; where a private ground truth
    exists, every seed's model scored on it (the stats are their mean, with each seed's and the
    std beside them, as in val.json). Checked first, published together at the end,
    metrics/<variant>/test-dev.json last."""
    seed = seeds[0]
    algorithm = f"{cfg['evaluate']['algorithm_name']}-{variant}"
    submissions = output_path(cfg, "submissions", variant)
    json_path, zip_path = evaluation.submission_paths(submissions, algorithm)
    record_path = output_path(cfg, "metrics", variant, "test-dev.json")
    outputs = StagedOutputs([json_path, zip_path, record_path], "`pep predict`")
    dataset = build_dataset(cfg, "test-dev")
    private = resolve_data_path(cfg, "root") / PRIVATE_TEST_DEV_GT
    private_gt = load_coco(private) if private.exists() else None
    models = {s: load_trained(cfg, variant, s, device) for s in (seeds if private_gt is not None else [seed])}
    if private_gt is not None:
        for s, (_, final) in models.items():
            _check_categories(final, private_gt, default_run_dir(cfg, variant, s) / FINAL)
    model = models[seed][0]
    with outputs:
        log.info("%s seed %d: predicting %d test-dev images", variant, seed, len(dataset))
        results, _ = predict(model, dataset, cfg, torch.device(device), progress,
                             name=f"predict {variant} seed {seed} test-dev")
        evaluation.write_submission(results, submissions, algorithm, outputs)
        summary = {"submission": str(zip_path), "detections": len(results), "images": len(dataset)}
        record = {"variant": variant, "split": "test-dev", "seed": seed,
                  "submission": str(zip_path.relative_to(output_path(cfg))),
                  "detections": len(results), "images": len(dataset)}
        if private_gt is not None:  # the synthetic set: score every seed as the server would
            per_seed = {seed: evaluation.stats_in_percent(evaluation.evaluate(private_gt, results, "segm")["stats"])}
            for s in seeds[1:]:
                others, _ = predict(models[s][0], dataset, cfg, torch.device(device), progress,
                                    name=f"predict {variant} seed {s} test-dev")
                per_seed[s] = evaluation.stats_in_percent(evaluation.evaluate(private_gt, others, "segm")["stats"])
            summary["metrics"] = _mean_over_seeds(per_seed)
            summary["seeds"] = list(seeds)
            record.update(summary["metrics"], seeds=list(seeds), scored="locally, against " + PRIVATE_TEST_DEV_GT)
            if len(seeds) > 1:
                record["per_seed"] = {str(s): v for s, v in per_seed.items()}
                record["std"] = _std_over_seeds(per_seed)
        else:  # real COCO: only the evaluation server knows the answer
            record["scored"] = (f"not here: upload {zip_path.name} to the COCO server and commit its numbers "
                                f"as reports/test-dev-server/{variant}.json")
        outputs.write_json(record_path, record)
        outputs.publish()
    return summary


def _mean_over_seeds(per_seed: dict[int, dict]) -> dict:
    out = {}
    for key in evaluation.STAT_KEYS:
        values = [v[key] for v in per_seed.values()]
        out[key] = -1 if any(v < 0 for v in values) else round(statistics.mean(values), 3)
    return out


def _std_over_seeds(per_seed: dict[int, dict]) -> dict:
    return {key: round(statistics.stdev(v[key] for v in per_seed.values()), 3) for key in evaluation.STAT_KEYS}


def evaluate_command(cfg: dict, variant: str, split: str, seeds: list[int], tracker_factory=None,
                     progress: bool = True) -> int:
    """`pep evaluate`: every seed's model scored on val, one line of its mean AP."""
    from pep.distributed import choose_device

    if split != "val":
        raise PepError("`pep evaluate` scores the val split; test-dev has no public ground truth: "
                       "use `pep predict --split test-dev`")
    metrics = evaluate_variant(cfg, variant, seeds, device=choose_device(cfg["train"]["device"]),
                               tracker_factory=tracker_factory, progress=progress)
    print(f"{variant} val: " + ", ".join(f"{k} {metrics[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    return 0


def predict_command(cfg: dict, variant: str | None, seeds: list[int], progress: bool = True) -> int:
    """`pep predict --variant V`: the test-dev submission (and its local score where one can be had)."""
    from pep.distributed import choose_device

    if variant is None:
        raise PepError("`pep predict` needs --variant (the test-dev submission), or --images SOURCE... "
                       "--out OUT with --variant or --model (your own images)")
    summary = predict_test_dev(cfg, variant, seeds, device=choose_device(cfg["train"]["device"]), progress=progress)
    line = f"{variant} test-dev: {summary['detections']} detections on {summary['images']} images -> {summary['submission']}"
    if "metrics" in summary:
        line += f" (scored locally: AP {summary['metrics']['AP']:.1f}" + (
            f", mean of {len(summary['seeds'])} seeds)" if len(summary["seeds"]) > 1 else ")")
    print(line)
    return 0
