"""settings/<job>.json: each job's file holds what can change its result, and only that.

The workflow tests run dvc and Snakemake on these files; here, which setting reaches which
job's file, for every setting of params.yaml, and that an unchanged file is never rewritten.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pep import stage_settings
from pep.config import PROJECT_ROOT, VARIANTS, effective_params, flatten, load_params

RAW = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
BIN = PROJECT_ROOT / ".venv" / "bin"


def files(raw: dict, profile: str = "default") -> dict[str, str]:
    cfg = effective_params(raw, profile)
    return {name: stage_settings.render(settings) for name, settings in stage_settings.stage_files(cfg)}


def changed_by(key: str, value, profile: str = "default") -> set[str]:
    """The settings files whose content a change of one params.yaml key changes."""
    raw = copy.deepcopy(RAW)
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    assert node[last] != value, f"{key} is already {value!r}"
    node[last] = value
    before, after = files(RAW, profile), files(raw, profile)
    return {name.removeprefix("settings/").removesuffix(".json")
            for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


TRAIN = {f"train-{v}" for v in VARIANTS}
EVALUATE = {f"evaluate-{v}" for v in VARIANTS}
PREDICT = {f"predict-{v}" for v in VARIANTS}
MECHANISMS = {f"mechanisms-{v}" for v in VARIANTS}
VALIDATE = {"validate-train", "validate-val"}
SCORING = EVALUATE | MECHANISMS | PREDICT  # every job that runs the trained models


@pytest.mark.parametrize("key, value", [
    ("cluster.train.runtime_min", 1), ("cluster.evaluate.gpus", 1), ("data.num_workers", 7),
    ("train.log_every_iters", 3), ("train.checkpoint_every_iters", 3), ("tracking.experiment", "x"),
    ("tracking.register_models", False), ("data.download.mirror", "http://127.0.0.1:1"),
    ("data.download.keep_archives", True),
])
def test_what_cannot_change_a_result_is_in_no_file(key, value):
    assert changed_by(key, value) == set()


def test_another_profiles_section_is_in_no_file_of_this_profile():
    raw = copy.deepcopy(RAW)
    raw["profiles"]["coco"]["train"]["lr"] = 0.5
    raw["profiles"]["coco"]["cluster"]["train"]["runtime_min"] = 1
    assert files(raw) == files(RAW)
    assert files(raw, "coco") != files(RAW, "coco")  # ... and reaches that profile's jobs


def test_each_setting_reaches_the_jobs_it_can_change():
    assert changed_by("train.lr", 0.5) == TRAIN | {"reports"}
    assert changed_by("model.head.convs", 2) == TRAIN | {"reports"}
    assert changed_by("data.input.flip_prob", 0.0) == TRAIN | {"reports"}
    assert changed_by("data.input.test_min_size", 128) == SCORING | VALIDATE | {"reports"}
    assert changed_by("model.inference.score_threshold", 0.2) == SCORING | {"reports"}
    assert changed_by("model.purify.merge_threshold", 0.6) == \
        {f"{job}-{v}" for job in ("evaluate", "mechanisms", "predict") for v in ("purify", "pep")} | {"reports"}
    # the data and mechanism reports also count, per split, instances that own no grid cell
    assert changed_by("model.levels", {**RAW["model"]["levels"], "grids": [20, 16, 8]}) == \
        TRAIN | MECHANISMS | VALIDATE | {"reports"}
    assert changed_by("evaluate.bootstrap", {"resamples": 5, "seed": 0}) == EVALUATE | {"reports"}
    assert changed_by("evaluate.algorithm_name", "mine") == PREDICT | {"reports"}
    assert changed_by("data.synth", {**RAW["data"]["synth"], "num_val": 7}) == {"data", "reports"}
    assert changed_by("data.val_annotations", "a.json") == {"data", "validate-val"} | EVALUATE | MECHANISMS \
        | {"reports"}


def test_a_variants_settings_reach_its_own_jobs_alone():
    assert changed_by("variants.purify", {"excavate": True, "purify": True, "dedup": "purify_merge"}) == \
        {"train-purify", "evaluate-purify", "mechanisms-purify", "predict-purify", "reports"}
    assert changed_by("variants.purify", {"excavate": False, "purify": True, "dedup": "matrix_nms"}) == \
        {"evaluate-purify", "mechanisms-purify", "predict-purify", "reports"}  # de-duplication is inference


def test_a_modules_settings_reach_the_variants_that_have_it_alone():
    with_excavating = {v for v in VARIANTS if RAW["variants"][v]["excavate"]}
    with_purifying = {v for v in VARIANTS if RAW["variants"][v]["purify"]}
    assert changed_by("model.excavate.detach_inputs", not RAW["model"]["excavate"]["detach_inputs"]) == \
        {f"train-{v}" for v in with_excavating} | {"reports"}
    assert changed_by("model.purify.join_mask_iou", 0.5) == \
        {f"{job}-{v}" for job in ("evaluate", "mechanisms", "predict") for v in with_purifying} | {"reports"}


def test_a_new_seed_leaves_the_trained_seeds_alone():
    # the seeds of a variant share its training file: a new seed's job finds it already there
    # (DVC dry runs need every dependency on disk), and no training file changes
    assert changed_by("train.seeds", [0, 1]) == SCORING | {"reports"}
    assert changed_by("train.seeds", [3]) == SCORING | {"reports"}  # the first seed makes the submission


def test_refresh_removes_the_files_no_job_reads(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(RAW, sort_keys=False))
    stage_settings.refresh(load_params(params))
    old_layout = tmp_path / "settings" / "train-pep-seed1.json"  # per-seed files of an older layout
    old_layout.write_text("{}")
    assert stage_settings.stale(load_params(params)) == ["settings/train-pep-seed1.json (no job reads it)"]
    assert stage_settings.refresh(load_params(params)) == []
    assert not old_layout.exists()
    assert {p.name for p in (tmp_path / "settings").iterdir()} == \
        {Path(name).name for name, _ in stage_settings.stage_files(load_params(params))}


def test_every_setting_of_params_yaml_is_placed():
    """Each key of params.yaml lands in some job's file or in the list of those that change
    nothing (the tracking and cluster sections are that as a whole): no setting is forgotten."""
    cfg = effective_params(RAW, "default")
    placed = set()
    for _, settings in stage_settings.stage_files(cfg):
        placed |= set(flatten(settings))
    for key in flatten({s: cfg[s] for s in ("data", "model", "variants", "train", "evaluate")}):
        assert key in placed or key in stage_settings.NEVER, key
    assert not placed & set(stage_settings.NEVER)


def test_refresh_rewrites_only_what_changed(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(RAW, sort_keys=False))
    written = stage_settings.refresh(load_params(params))
    assert len(written) == len(list(stage_settings.stage_files(load_params(params))))
    times = {p: p.stat().st_mtime_ns for p in (tmp_path / "settings").iterdir()}
    assert stage_settings.refresh(load_params(params)) == []
    raw = copy.deepcopy(RAW)
    raw["evaluate"]["bootstrap"]["resamples"] = 5
    raw["cluster"]["train"]["runtime_min"] = 5
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    os.utime(params)
    rewritten = {p.name for p in stage_settings.refresh(load_params(params))}
    assert rewritten == {f"evaluate-{v}.json" for v in VARIANTS} | {"reports.json"}
    for path, before in times.items():
        if path.name not in rewritten:
            assert path.stat().st_mtime_ns == before, path.name
    assert not list((tmp_path / "settings").glob(".*"))  # no temporary file left


def test_pep_settings_check_names_out_of_date_files(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(RAW, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *a: subprocess.run([str(BIN / "pep"), "settings", "--params", str(params), *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=tmp_path)
    first = run("--check")
    assert first.returncode == 1 and "settings/data.json is out of date" in first.stderr
    assert "settings rewritten: data.json" in run().stdout
    assert run("--check").returncode == 0
    assert "none: every job's settings are unchanged" in run().stdout


def test_seeds_are_set_once_for_every_profile(tmp_path):
    from pep.config import validate_params

    raw = copy.deepcopy(RAW)
    raw["profiles"]["coco"]["train"]["seeds"] = [1]
    assert any(p.startswith("profiles.coco.train.seeds: seeds are set once") for p in validate_params(raw))


def test_a_downloaded_data_set_stays_out_of_dvcs_cache():
    from pep.config import validate_params

    raw = copy.deepcopy(RAW)
    raw["profiles"]["coco"]["data"]["root"] = "data/coco"
    problems = validate_params(raw)
    assert any("data.root: a coco data set must lie outside data/coco/" in p for p in problems), problems
    assert not validate_params(RAW)
    assert not Path(RAW["profiles"]["coco"]["data"]["root"]).is_relative_to("data/coco")
