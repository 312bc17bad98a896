"""What each stage's result depends on: the profile-resolved settings, one file per job.

dvc.yaml and the Snakefile do not list params.yaml keys. Each job depends instead on its own
file under `settings/` (e.g. `settings/train-pep.json`), holding exactly the effective
settings (the chosen profile merged in) that can change that job's result. The seeds of a
variant share one training file (the seed is in the job's command and output path), so a seed
added to `train.seeds` finds its file already there: `dvc status` and `dvc repro --dry` name
its jobs before any `pep settings`, and a removed seed leaves no file behind. `pep settings`
writes them, and rewrites a file only when its content changes, so its modification time moves
only then: DVC (by hash) and Snakemake (by time) see the same change and rerun the same jobs.
What cannot change a result (SLURM resources, loader workers, logging, checkpoint cadence,
tracking) is in no file, and so never reruns anything.

DVC runs `pep settings` as the pipeline's first stage; the Snakefile calls `refresh` when it
is read, so `snakemake -n` already sees the change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

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


def train_settings(cfg: dict, variant: str) -> dict:
    """What a variant's trained models come from, every seed's alike (the seed is in the
    job's command; `params_hash`, which tells whether a checkpoint may be resumed)."""
    model = _without(cfg["model"], INFERENCE_ONLY + _absent_modules(cfg, variant), "model")
    train = _without(cfg["train"], NEVER, "train")
    train.pop("seeds")
    variant_cfg = {k: v for k, v in cfg["variants"][variant].items() if k != "dedup"}
    return {**_data_files(cfg, "train"), **_pick(cfg, ("data.train_skip_empty",)),
            "data.input": {k: v for k, v in cfg["data"]["input"].items() if k != "test_min_size"},
            "model": model, f"variants.{variant}": variant_cfg, "train": train}


def params_hash(cfg: dict, variant: str | None = None) -> str:
    """12 hex chars that change when a parameter that shapes the trained model does (a
    variant's `train_settings`, without the seed); without a variant, any variant's. Editing one
    variant leaves the others' runs (and checkpoints) valid; adding a seed or changing an
    inference rule leaves every run valid. Checkpoints (pep.engine.train) and MLflow runs
    (pep.tracking) are told apart by it."""
    effective = train_settings(cfg, variant) if variant is not None else \
        {name: train_settings(cfg, name) for name in VARIANTS}
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def model_settings(cfg: dict, variant: str) -> dict:
    """The parameters that the network's shape and behaviour come from, as plain JSON values
    (what torch.load(weights_only=True) reads back, and what compares equal after it): stored
    in model_final.pt and in a logged MLflow model."""
    return json.loads(json.dumps({"model": cfg["model"], f"variants.{variant}": cfg["variants"][variant]}))


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


def train_file(variant: str) -> str:
    """The settings file of every training job of a variant, whatever its seed."""
    return f"{FOLDER}/train-{variant}.json"


def stage_files(cfg: dict) -> Iterator[tuple[str, dict]]:
    """(path relative to the project, settings) of every job of the pipeline."""
    yield f"{FOLDER}/data.json", data_settings(cfg)
    for split in SPLITS:
        yield f"{FOLDER}/validate-{split}.json", validate_settings(cfg, split)
    for variant in VARIANTS:
        yield train_file(variant), train_settings(cfg, variant)
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


def _orphans(cfg: dict) -> list[Path]:
    """Settings files that no job of the pipeline reads any more (a variant's file of an older
    layout, say): left behind they would look current."""
    folder = output_path(cfg, FOLDER)
    wanted = {output_path(cfg, name) for name, _ in stage_files(cfg)}
    return sorted(p for p in folder.glob("*.json") if p not in wanted) if folder.is_dir() else []


def refresh(cfg: dict) -> list[Path]:
    """Write every job's settings file whose content differs and remove those no job reads;
    the files written. A file whose new content is what dvc.lock records for it gets back the
    time it had with that content (`_time_of_locked_content`)."""
    written = []
    times = _read_times(cfg)
    locked = _locked_md5(cfg)
    for name, path, text in _changed(cfg):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        _time_of_locked_content(name, path, text, times, locked)
        written.append(path)
    for name, _ in stage_files(cfg):
        path = output_path(cfg, name)
        if path.is_file():  # what each content's time is, for a later return to it
            times.setdefault(name, {}).setdefault(_digest(path.read_bytes()), path.stat().st_mtime_ns)
    for path in _orphans(cfg):
        path.unlink(missing_ok=True)
    _write_times(cfg, times)
    return written


# A setting changed and changed back: DVC compares hashes and reruns nothing; Snakemake compares
# times, and in a workspace that DVC built (where Snakemake has recorded no checksums of its
# own) it would rerun every job the rewritten file feeds. So a settings file whose content
# returns to what dvc.lock records for every stage that reads it, gets back the time it had
# when it last held that content: older than those stages' outputs, which DVC made from it.
TIMES = ".pep/settings_times.json"  # per file, content digest -> modification time (ns)


def _digest(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # what dvc.lock records of a file (md5)


def _time_of_locked_content(name: str, path: Path, text: str, times: dict, locked: dict) -> None:
    digest = _digest(text.encode("utf-8"))
    recorded = times.get(name, {}).get(digest)
    if recorded is not None and locked.get(name) == {digest}:
        os.utime(path, ns=(time.time_ns(), recorded))
    else:
        times.setdefault(name, {})[digest] = path.stat().st_mtime_ns


def _locked_md5(cfg: dict) -> dict[str, set[str]]:
    """For each settings file, the md5s that dvc.lock records for it (one per stage reading it);
    empty without a dvc.lock."""
    lock = output_path(cfg, "dvc.lock")
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, set[str]] = {}
    for stage in stages.values():
        for dep in stage.get("deps", []) if isinstance(stage, dict) else []:
            if str(dep.get("path", "")).startswith(f"{FOLDER}/") and "md5" in dep:
                out.setdefault(dep["path"], set()).add(dep["md5"])
    return out


def _read_times(cfg: dict) -> dict:
    try:
        return json.loads(output_path(cfg, TIMES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_times(cfg: dict, times: dict) -> None:
    path = output_path(cfg, TIMES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(times, sort_keys=True) + "\n")
    except OSError:  # a read-only checkout: only the return to an old content loses its time
        pass


def stale(cfg: dict) -> list[str]:
    """Settings files that `refresh` would write or remove."""
    return [name for name, _, _ in _changed(cfg)] + \
        [f"{FOLDER}/{p.name} (no job reads it)" for p in _orphans(cfg)]


def settings_command(cfg: dict, check: bool) -> int:
    """`pep settings [--check]`: rewrite the jobs' settings files, or (--check) name each stale one."""
    if check:
        out_of_date = stale(cfg)
        for name in out_of_date:
            print(f"pep: {name} is out of date with {cfg['params_file']}; run `pep settings`", file=sys.stderr)
        return 1 if out_of_date else 0
    written = refresh(cfg)
    names = ", ".join(p.name for p in written) if written else "none: every job's settings are unchanged"
    print(f"profile {cfg['profile']}: settings rewritten: {names}")
    return 0
