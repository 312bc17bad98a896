"""What each stage's result depends on: the profile-resolved settings, one file per job.

dvc.yaml and the Snakefile do not list params.yaml keys. Each job depends instead on its own
file under `settings/` (e.g. `settings/train-pep-seed0.json`), holding exactly the effective
settings (the chosen profile merged in) that can change that job's result. `pep settings`
writes them, and rewrites a file only when its content changes, so its modification time moves
only then: DVC (by hash) and Snakemake (by time) see the same change and rerun the same jobs.
What cannot change a result (SLURM resources, loader workers, logging, checkpoint cadence,
tracking) is in no file, and so never reruns anything.

DVC runs `pep settings` as the pipeline's first stage; the Snakefile calls `refresh` when it
is read, so `snakemake -n` already sees the change.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

from pep.config import VARIANTS, output_path
from pep.jsonfile import write_text_atomic

FOLDER = "settings"

# Keys that change no result of any stage.
NEVER = ("data.num_workers", "data.download.mirror", "data.download.keep_archives",
         "train.checkpoint_every_iters", "train.log_every_iters", "train.progress_every_iters",
         "train.progress_every_s", "evaluate.progress_every_s")
# Model keys read at inference only: changing one re-scores trained models, never retrains them.
INFERENCE_ONLY = ("model.inference", "model.perceive.score_threshold", "model.perceive.max_descriptors",
                  "model.excavate.key_threshold", "model.excavate.top_k", "model.excavate.max_originals",
                  "model.excavate.mined_score", "model.excavate.skip_original_cells",
                  "model.purify.merge_threshold", "model.purify.merge_rule", "model.purify.join_mask_iou",
                  "model.purify.then_matrix_nms")
SPLITS = ("train", "val")


def _get(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _pick(cfg: dict, keys: tuple[str, ...]) -> dict:
    """{"a.b": value} for each dotted key (the schema makes every one of them present)."""
    return {key: copy.deepcopy(_get(cfg, key)) for key in keys}


def _without(tree: dict, keys: tuple[str, ...], prefix: str) -> dict:
    """A copy of the section `prefix` without the dotted `keys` that fall in it."""
    tree = copy.deepcopy(tree)
    for key in keys:
        if not key.startswith(prefix + "."):
            continue
        *parents, last = key[len(prefix) + 1:].split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return tree


def _data_files(cfg: dict, *splits: str) -> dict:
    keys = ["data.source", "data.root"]
    for split in splits:
        keys += [f"data.{split}_annotations", f"data.{split}_images"] if split != "test_dev" \
            else ["data.test_dev_info", "data.test_dev_images"]
    return _pick(cfg, tuple(keys))


def data_settings(cfg: dict) -> dict:
    data = _without(cfg["data"], NEVER, "data")
    for key in ("input", "train_skip_empty"):
        data.pop(key)
    if data["source"] != "synth":
        data.pop("synth")
    if data["source"] != "coco":
        data.pop("download")
    return {"profile": cfg["profile"], "data": data}


def validate_settings(cfg: dict, split: str) -> dict:
    """The split's files; and what decides which instances own a grid cell, which the data
    report counts."""
    return {**_data_files(cfg, split), **_assignment(cfg)}


def _assignment(cfg: dict) -> dict:
    return _pick(cfg, ("data.input.test_min_size", "data.input.max_size", "data.input.size_divisibility",
                       "model.levels", "model.perceive.center_radius"))


def train_settings(cfg: dict, variant: str, seed: int | None) -> dict:
    """What a trained model comes from; without a seed, what every seed of a variant shares
    (pep.tracking.params_hash, which tells whether a checkpoint may be resumed)."""
    model = _without(cfg["model"], INFERENCE_ONLY + _absent_modules(cfg, variant), "model")
    train = _without(cfg["train"], NEVER, "train")
    train.pop("seeds")
    variant_cfg = {k: v for k, v in cfg["variants"][variant].items() if k != "dedup"}
    out = {**_data_files(cfg, "train"), **_pick(cfg, ("data.train_skip_empty",)),
           "data.input": {k: v for k, v in cfg["data"]["input"].items() if k != "test_min_size"},
           "model": model, f"variants.{variant}": variant_cfg, "train": train}
    if seed is not None:
        out["seed"] = seed
    return out


def _absent_modules(cfg: dict, variant: str) -> tuple[str, ...]:
    """The settings sections of the modules a variant does not build: they cannot change it."""
    return tuple(f"model.{module}" for module in ("excavate", "purify") if not cfg["variants"][variant][module])


def _inference(cfg: dict, variant: str) -> dict:
    absent = _absent_modules(cfg, variant)
    keys = tuple(k for k in INFERENCE_ONLY if not any(k.startswith(a + ".") for a in absent))
    return {**_pick(cfg, ("data.input.test_min_size", "data.input.max_size", "data.input.size_divisibility")),
            **_pick(cfg, keys), f"variants.{variant}": copy.deepcopy(cfg["variants"][variant]),
            **_pick(cfg, ("evaluate.batch_size", "train.device"))}


def evaluate_settings(cfg: dict, variant: str) -> dict:
    """Scoring every seed's model on val: the inference rules, the bootstrap, the seeds."""
    return {**_data_files(cfg, "val"), **_inference(cfg, variant),
            **_pick(cfg, ("evaluate.splits", "evaluate.iou_types", "evaluate.bootstrap", "train.seeds"))}


def mechanisms_settings(cfg: dict, variant: str) -> dict:
    """The mechanism report of every seed's model on val; its data counts read the train split
    and perceiving's cell assignment too."""
    return {**_data_files(cfg, "val", "train"), **_inference(cfg, variant), **_assignment(cfg),
            **_pick(cfg, ("train.seeds",))}


def predict_settings(cfg: dict, variant: str) -> dict:
    """The test-dev submission of the first seed's model; every seed scored where the ground
    truth is at hand (the synthetic set)."""
    return {**_data_files(cfg, "test_dev"), **_inference(cfg, variant),
            **_pick(cfg, ("evaluate.algorithm_name", "train.seeds"))}


def report_settings(cfg: dict) -> dict:
    """The tables, figures and report page describe the whole recipe."""
    out = {"profile": cfg["profile"]}
    for section in ("data", "model", "variants", "train", "evaluate"):
        out[section] = _without(cfg[section], NEVER, section)
    return out


def train_file(variant: str, seed: int) -> str:
    return f"{FOLDER}/train-{variant}-seed{seed}.json"


def stage_files(cfg: dict) -> Iterator[tuple[str, dict]]:
    """(path relative to the project, settings) of every job of the pipeline."""
    yield f"{FOLDER}/data.json", data_settings(cfg)
    for split in SPLITS:
        yield f"{FOLDER}/validate-{split}.json", validate_settings(cfg, split)
    for variant in VARIANTS:
        for seed in cfg["train"]["seeds"]:
            yield train_file(variant, seed), train_settings(cfg, variant, seed)
        yield f"{FOLDER}/evaluate-{variant}.json", evaluate_settings(cfg, variant)
        yield f"{FOLDER}/mechanisms-{variant}.json", mechanisms_settings(cfg, variant)
        yield f"{FOLDER}/predict-{variant}.json", predict_settings(cfg, variant)
    yield f"{FOLDER}/reports.json", report_settings(cfg)


def render(settings: dict) -> str:
    return json.dumps(settings, indent=1, sort_keys=True) + "\n"


def _changed(cfg: dict) -> Iterator[tuple[str, Path, str]]:
    """(name, path, new text) of every settings file whose content differs or is missing."""
    for name, settings in stage_files(cfg):
        path = output_path(cfg, name)
        text = render(settings)
        try:
            if path.read_text(encoding="utf-8") == text:
                continue
        except OSError:
            pass
        yield name, path, text


def refresh(cfg: dict) -> list[Path]:
    """Write every job's settings file whose content differs; the files written."""
    written = []
    for _, path, text in _changed(cfg):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        written.append(path)
    return written


def stale(cfg: dict) -> list[str]:
    """Settings files that `refresh` would write."""
    return [name for name, _, _ in _changed(cfg)]
