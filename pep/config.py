"""params.yaml: loading, profile merging and validation.

The file holds the `default` profile as its top-level sections and, under `profiles`, partial
overrides for other profiles (the paper's `coco` recipe). The effective parameters are the
top-level sections with the selected profile's overrides merged on top: dictionaries merge key
by key, anything else (numbers, strings, lists) is replaced whole.

Validation runs on every profile, not only the selected one, so a typo in the `coco` overrides
is caught on a laptop before anybody books GPU time.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from pep.errors import PepError
from pep.jsonfile import DuplicateKeyError, load_yaml_unique

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"
VARIANTS = ("baseline", "excavate", "purify", "pep")
SECTIONS = ("data", "model", "variants", "train", "evaluate", "tracking", "cluster")


class ConfigError(PepError):
    """params.yaml is unreadable or breaks the schema; the message lists every problem."""


@lru_cache(maxsize=1)
def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in; only dictionaries merge, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_params_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameter file ({exc.strerror})") from None
    try:
        raw = load_yaml_unique(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(raw).__name__}")
    return raw


def load_params(path: str | Path = DEFAULT_PARAMS, profile: str | None = None) -> dict:
    """Validated effective parameters of `profile` (default: the file's `profile` key).

    The result carries `profile` (the profile in force) and `params_file` (absolute path) so
    that stages can resolve relative paths and record what they ran with.
    """
    path = Path(path)
    raw = read_params_file(path)
    problems = validate_params(raw)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s) in the parameters:\n  "
                          + "\n  ".join(problems))
    chosen = profile or raw["profile"]
    if chosen != "default" and chosen not in raw["profiles"]:
        known = ", ".join(["default", *raw["profiles"]])
        raise ConfigError(f"{path}: profile: unknown profile '{chosen}' (expected one of: {known})")
    effective = effective_params(raw, chosen)
    effective["params_file"] = str(path.resolve())
    return effective


def effective_params(raw: dict, profile: str) -> dict:
    overrides = {} if profile == "default" else raw["profiles"].get(profile, {})
    merged = {section: raw[section] for section in SECTIONS}
    merged = deep_merge(merged, overrides)
    merged["profile"] = profile
    return merged


def validate_params(raw: dict) -> list[str]:
    """Every problem in a raw params.yaml, each naming its key; empty when it is valid."""
    schema = load_schema()
    problems = [_describe(err) for err in _errors(raw, schema)]
    if problems:
        return problems  # profiles cannot be merged reliably on top of a broken base
    base_rules = consistency_problems(effective_params(raw, "default"))
    problems = [f"{key}: {msg}" for key, msg in base_rules]
    for name, overrides in raw["profiles"].items():
        if "seeds" in overrides.get("train", {}):
            # dvc.yaml's matrix of training jobs reads the top-level list, whatever the profile
            problems.append(f"profiles.{name}.train.seeds: seeds are set once, as train.seeds at the "
                            "top level, for every profile")
        merged = effective_params(raw, name)
        schema_errors = list(_errors({**merged, "profile": raw["profile"],
                                      "profiles": raw["profiles"]}, schema))
        problems += [_describe(err, prefix=_prefix_for(err, name, overrides)) for err in schema_errors]
        if not schema_errors:
            problems += [f"{_prefix_for_key(key, name, overrides)}{key}: {msg}"
                         for key, msg in consistency_problems(merged) if (key, msg) not in base_rules]
    return list(dict.fromkeys(problems))


def crowding_settings(cfg: dict) -> dict:
    """The synth section (`data.synth`) with its crowding level's settings (`crowding_levels[crowding]`) on top."""
    levels = cfg["crowding_levels"]
    if cfg["crowding"] not in levels:
        raise PepError(f"data.synth.crowding: {cfg['crowding']!r} is not one of data.synth.crowding_levels "
                       f"({', '.join(levels)})")
    return {**cfg, **levels[cfg["crowding"]]}


def consistency_problems(cfg: dict) -> list[tuple[str, str]]:
    """Rules that tie several keys together, which JSON Schema cannot say."""
    out: list[tuple[str, str]] = []
    levels = cfg["model"]["levels"]
    n = len(levels["features"])
    for key in ("grids", "scale_ranges"):
        if len(levels[key]) != n:
            out.append((f"model.levels.{key}",
                        f"has {len(levels[key])} entries but model.levels.features has {n}: "
                        "give one per level"))
    for i, (low, high) in enumerate(levels["scale_ranges"]):
        if low >= high:
            out.append((f"model.levels.scale_ranges[{i}]", f"expected low < high, got [{low}, {high}]"))
    if sorted(levels["features"]) != levels["features"]:
        out.append(("model.levels.features", "must be in increasing order (finest level first)"))
    data, profile = cfg["data"], cfg.get("profile", "default")
    home = f"data/{profile}"
    root = os.path.normpath(data["root"])
    if data["source"] != "synth" and (root == home or root.startswith(home + os.sep)):
        # data/<profile> is the data stage's DVC output: a data set inside would be copied into
        # DVC's cache (COCO: 26 GB) and pushed with the results
        out.append(("data.root", f"a {data['source']} data set must lie outside {home}/, which DVC "
                                 f"caches; e.g. datasets/{profile} ({home}/ then holds only its manifest)"))
    synth = cfg["data"]["synth"]
    level = synth["crowding_levels"].get(synth["crowding"], {})
    if synth["crowding"] in synth["crowding_levels"]:
        synth = crowding_settings(synth)  # the level's values are the ones that draw the set
    else:
        out.append(("data.synth.crowding", f"{synth['crowding']!r} is not a key of data.synth.crowding_levels "
                                           f"({', '.join(synth['crowding_levels'])})"))
    for key in ("image_size", "crowds_per_image", "objects_per_crowd", "loners_per_image",
                "object_size", "nests_per_image", "nest_depth", "nest_ratio", "nest_size"):
        low, high = synth[key]
        if low > high:
            where = f"crowding_levels.{synth['crowding']}.{key}" if key in level else key
            out.append((f"data.synth.{where}", f"expected [low, high] with low <= high, got [{low}, {high}]"))
    if synth["object_size"][1] > synth["image_size"][0]:
        out.append(("data.synth.object_size",
                    f"largest object ({synth['object_size'][1]} px) does not fit the smallest "
                    f"image ({synth['image_size'][0]} px)"))
    if not any(synth["textures"].values()):
        out.append(("data.synth.textures", "all weights are 0: give at least one texture a weight"))
    backbone = cfg["model"]["backbone"]
    if backbone["norm"] == "frozen_batch" and not backbone["pretrained"] and cfg["train"]["amp"]:
        # Frozen statistics of untrained weights are the identity: through a deep ResNet the
        # activations grow until float16 overflows (NaN in the first step, seen on an H200).
        out.append(("model.backbone.norm", "frozen_batch keeps the statistics of ImageNet weights, "
                                           "but pretrained is false: under mixed precision (train.amp) "
                                           "the activations overflow; use norm: batch"))
    inp = cfg["data"]["input"]
    for size in [*inp["train_min_size"], inp["test_min_size"]]:
        if size > inp["max_size"]:
            out.append(("data.input", f"a shorter-side size {size} exceeds max_size {inp['max_size']}"))
            break
    train = cfg["train"]
    if train["lr_steps"] != sorted(train["lr_steps"]):
        out.append(("train.lr_steps", f"must be increasing, got {train['lr_steps']}"))
    late = [s for s in train["lr_steps"] if s >= train["epochs"]]
    if train["schedule"] == "step" and late:
        out.append(("train.lr_steps", f"steps {late} are not before the last epoch ({train['epochs']})"))
    for name, variant in cfg["variants"].items():
        if variant["dedup"] == "purify_merge" and not variant["purify"]:
            out.append((f"variants.{name}.dedup", "purify_merge needs the purifying module: "
                                                  f"set variants.{name}.purify to true"))
    head = cfg["model"]["head"]
    for key, channels in (("model.head.channels", head["channels"]),
                          ("model.fpn_channels", cfg["model"]["fpn_channels"]),
                          ("model.descriptor_dim", cfg["model"]["descriptor_dim"])):
        if channels % head["norm_groups"]:
            out.append((key, f"{channels} channels cannot be split into "
                             f"model.head.norm_groups={head['norm_groups']} GroupNorm groups"))
    return out


def _errors(instance: Any, schema: dict) -> Iterable[jsonschema.ValidationError]:
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _has_path(tree: Any, path: list[Any]) -> bool:
    for part in path:
        try:
            tree = tree[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _prefix_for(err: jsonschema.ValidationError, profile: str, overrides: dict) -> str:
    path = list(err.absolute_path)
    if path and path[0] in SECTIONS and _has_path(overrides, path):
        return f"profiles.{profile}."
    return ""


def _prefix_for_key(key: str, profile: str, overrides: dict) -> str:
    parts = key.split("[")[0].split(".")
    return f"profiles.{profile}." if _has_path(overrides, parts) else f"(profile {profile}) "


def _describe(err: jsonschema.ValidationError, prefix: str = "") -> str:
    where = prefix + (_dotted(err.absolute_path) or "(top level)")
    kind, value, schema = err.validator, err.instance, err.schema
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(k for k in value if k not in allowed)
        return (f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)} (expected one of: {', '.join(allowed)})")
    if kind == "required":
        missing = [k for k in err.validator_value if k not in value]
        return f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    if "propertyNames" in err.schema_path:  # a key (not a value) broke the rule
        allowed = err.validator_value if kind == "enum" else None
        return (f"{where}: unknown key {_show(value)}"
                + (f" (expected one of: {', '.join(allowed)})" if allowed else f" ({err.message})"))
    if kind == "type":
        return f"{where}: expected {err.validator_value}, got {_show(value)}"
    if kind == "enum":
        return f"{where}: expected one of {', '.join(map(_show, err.validator_value))}; got {_show(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{where}: must be {bounds[kind]} {err.validator_value}, got {_show(value)}"
    if kind in ("minItems", "maxItems"):
        word = "at least" if kind == "minItems" else "at most"
        return f"{where}: expected {word} {err.validator_value} item(s), got {len(value)}"
    return f"{where}: {err.message}"


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_data_path(cfg: dict, key: str) -> Path:
    """An absolute path for data.<key>; relative paths hang off data.root, which hangs off the
    folder of params.yaml (the project root)."""
    base = Path(cfg.get("params_file", DEFAULT_PARAMS)).parent
    root = base / cfg["data"]["root"]
    return root if key == "root" else root / cfg["data"][key]


def project_relative(cfg: dict, path: str | Path) -> str:
    """`path` as outputs record it: relative to the project (the folder of params.yaml) when it
    lies inside, so that results do not change when the project moves; else as it is."""
    base = Path(cfg.get("params_file", DEFAULT_PARAMS)).parent.resolve()
    resolved = Path(path).resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(path)


def output_path(cfg: dict, *parts: str) -> Path:
    """Where a stage writes (runs/, metrics/, submissions/): beside params.yaml, so that a
    project folder holds its own results whatever the working directory."""
    return Path(cfg.get("params_file", DEFAULT_PARAMS)).parent.joinpath(*parts)


def run_dir(cfg: dict, variant: str, seed: int) -> Path:
    """Training's folder: checkpoints, the final model, the training log."""
    return output_path(cfg, "runs", variant, f"seed{seed}")


def results_path(cfg: dict, variant: str, seed: int, split: str = "val") -> Path:
    """Raw COCO results of one model on one split. Not under runs/: that folder is training's
    output, and a file written into it by evaluation would look like a change to training."""
    return output_path(cfg, "results", variant, f"seed{seed}", f"results_{split}.json")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (MLflow params, DVC-style keys)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def chosen_seeds(cfg: dict, seed: int | None) -> list[int]:
    """The seeds a stage command works on: the one named (--seed), else every seed of train.seeds."""
    return [seed] if seed is not None else list(cfg["train"]["seeds"])
