"""params.yaml and its schema: the shipped file is valid, and each kind of mistake is named."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from pep.cli import main
from pep.config import (PROJECT_ROOT, VARIANTS, ConfigError, deep_merge, load_params,
                        read_params_file, validate_params)

PARAMS = PROJECT_ROOT / "params.yaml"


@pytest.fixture
def raw() -> dict:
    return read_params_file(PARAMS)


def write(tmp_path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems_of(tmp_path, raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, raw))
    return str(info.value)


def test_shipped_params_are_valid_for_every_profile(raw):
    assert validate_params(raw) == []
    assert set(raw["profiles"]) >= {"coco"}
    for profile in ["default", *raw["profiles"]]:
        cfg = load_params(PARAMS, profile=profile)
        assert cfg["profile"] == profile
        assert set(cfg["variants"]) == set(VARIANTS)


def test_variants_switch_modules_as_in_the_paper(default_params):
    v = default_params["variants"]
    assert (v["baseline"]["excavate"], v["baseline"]["purify"], v["baseline"]["dedup"]) == (False, False, "matrix_nms")
    assert (v["excavate"]["excavate"], v["excavate"]["purify"], v["excavate"]["dedup"]) == (True, False, "matrix_nms")
    assert (v["purify"]["excavate"], v["purify"]["purify"], v["purify"]["dedup"]) == (False, True, "purify_merge")
    assert (v["pep"]["excavate"], v["pep"]["purify"], v["pep"]["dedup"]) == (True, True, "purify_merge")


def test_coco_profile_is_the_papers_recipe():
    cfg = load_params(PARAMS, profile="coco")
    train, model = cfg["train"], cfg["model"]
    assert (train["optimizer"], train["lr"], train["momentum"], train["weight_decay"]) == ("sgd", 0.01, 0.9, 0.0001)
    assert (train["batch_size"], train["epochs"], train["lr_steps"]) == (16, 36, [27, 33])
    assert (train["warmup_iters"], train["clip_grad_norm"]) == (500, 35.0)
    assert model["backbone"]["depth"] == 101 and model["backbone"]["pretrained"] is True
    assert model["levels"]["grids"] == [40, 36, 24, 16, 12]
    assert (model["head"]["convs"], model["head"]["channels"], model["descriptor_dim"]) == (4, 256, 256)
    assert (cfg["data"]["input"]["test_min_size"], cfg["data"]["input"]["max_size"]) == (800, 1333)
    # settings the profile does not override come from the top-level sections
    assert cfg["model"]["inference"] == load_params(PARAMS, profile="default")["model"]["inference"]


def test_the_switch_is_the_profile_key(tmp_path, raw):
    raw["profile"] = "coco"
    assert load_params(write(tmp_path, raw))["model"]["backbone"]["depth"] == 101


def test_deep_merge_merges_dicts_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 1}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # untouched


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["model"]["head"].update(chanels=64),
     "model.head: unknown key 'chanels' (expected one of: channels, convs, norm_groups)"),
    (lambda r: r["train"].update(lr="fast"), "train.lr: expected number, got 'fast'"),
    (lambda r: r["train"].update(batch_size=0), "train.batch_size: must be >= 1, got 0"),
    (lambda r: r["data"]["input"].update(flip_prob=1.5), "data.input.flip_prob: must be <= 1, got 1.5"),
    (lambda r: r["model"]["backbone"].update(depth=152), "model.backbone.depth: expected one of 18, 34, 50, 101; got 152"),
    (lambda r: r["variants"].pop("purify"), "variants: missing key 'purify'"),
    (lambda r: r["variants"]["pep"].update(dedup="nms"), "variants.pep.dedup: expected one of"),
    (lambda r: r["data"]["synth"].update(classes=["circle", "blob"]), "data.synth.classes[1]: expected one of"),
    (lambda r: r.update(extra={}), "(top level): unknown key 'extra'"),
    (lambda r: r["profiles"]["coco"]["model"].update(fpn_chanels=256),
     "profiles.coco.model: unknown key 'fpn_chanels'"),
    (lambda r: r["profiles"]["coco"]["train"].update(lr=-1), "profiles.coco.train.lr: must be > 0, got -1"),
    (lambda r: r["profiles"]["coco"].update(trian={}), "profiles.coco: unknown key 'trian' (expected one of: data, model"),
    (lambda r: r["model"]["levels"].update(grids=[24, 16]),
     "model.levels.grids: has 2 entries but model.levels.features has 3"),
    (lambda r: r["profiles"]["coco"]["model"]["levels"].update(grids=[40, 36]),
     "profiles.coco.model.levels.grids: has 2 entries but model.levels.features has 5"),
    (lambda r: r["data"]["synth"].update(object_size=[30, 20]), "data.synth.object_size: expected [low, high] with low <= high"),
    (lambda r: r["train"].update(schedule="step", lr_steps=[4, 20]), "train.lr_steps: steps [20] are not before the last epoch (6)"),
    (lambda r: r["model"]["head"].update(channels=48), "model.head.channels: 48 channels cannot be split into model.head.norm_groups=32"),
    (lambda r: r["data"]["synth"].update(textures={"solid": 0, "stripes": 0, "checker": 0, "speckle": 0}),
     "data.synth.textures: all weights are 0"),
    (lambda r: r["data"]["synth"].update(class_colour_jitter="red"), "data.synth.class_colour_jitter: expected"),
    (lambda r: r["data"]["synth"].update(crowding="dense"), "data.synth.crowding: 'dense' is not a key of data.synth.crowding_levels"),
    (lambda r: r["data"]["synth"]["crowding_levels"]["demo"].update(nest_depth=[3, 2]),
     "data.synth.crowding_levels.demo.nest_depth: expected [low, high] with low <= high"),
    (lambda r: r["data"]["synth"]["crowding_levels"]["demo"].update(nest_colour=1),
     "data.synth.crowding_levels.demo: unknown key 'nest_colour'"),
    (lambda r: r["profiles"]["coco"]["model"]["backbone"].update(pretrained=False),
     "profiles.coco.model.backbone.norm: frozen_batch keeps the statistics of ImageNet weights, but pretrained is false"),
])
def test_each_mistake_is_named(tmp_path, raw, mutate, expected):
    mutate(raw)
    assert expected in problems_of(tmp_path, raw)


def test_all_mistakes_reported_at_once(tmp_path, raw):
    raw["train"]["lr"] = "fast"
    raw["train"]["epochs"] = -1
    message = problems_of(tmp_path, raw)
    assert "2 problem(s)" in message and "train.lr" in message and "train.epochs" in message


def test_unknown_profile(tmp_path, raw):
    raw["profile"] = "imagenet"
    assert "profile: unknown profile 'imagenet' (expected one of: default, coco)" in problems_of(tmp_path, raw)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_cli_reports_bad_params_without_traceback(tmp_path, raw):
    raw["train"]["lr"] = "fast"
    path = write(tmp_path, raw)
    proc = subprocess.run([sys.executable, "-m", "pep.cli", "params", "--params", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lr: expected number, got 'fast'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_prints_effective_params(capsys):
    assert main(["params", "--params", str(PARAMS), "--profile", "coco"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["profile"] == "coco" and shown["model"]["backbone"]["depth"] == 101


def test_snakemake_validates_the_file_with_the_same_schema(raw):
    from snakemake.utils import validate

    validate(copy.deepcopy(raw), str(PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"))
    raw["train"]["lr"] = "fast"
    from snakemake.exceptions import WorkflowError
    with pytest.raises(WorkflowError, match="lr"):
        validate(raw, str(PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"))
