"""What evaluation wrote, as both `pep tables` and `pep figures` read it: metrics/<variant>/val.json
(the COCO mask stats in percent, checked) and metrics/<variant>/val_bootstrap.json (AP per
bootstrap resample of the val images), and the name of the data set they were measured on."""

from __future__ import annotations

import math
from typing import Any

from pep.config import VARIANTS, output_path
from pep.errors import PepError
from pep.jsonfile import read_json

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def dataset_name(cfg: dict) -> str:
    source = cfg["data"]["source"]
    if source == "synth":
        return "the synthetic crowded-shapes set"
    if source == "coco":
        return "COCO 2017"
    return f"a custom COCO-format data set ({cfg['data']['root']})"


def _check_stats(stats: Any, where: str, allow_missing: bool) -> None:
    if not isinstance(stats, dict):
        raise PepError(f"{where}: expected a mapping of {', '.join(METRIC_KEYS)}")
    for key in METRIC_KEYS:
        value = stats.get(key)
        if value is None and allow_missing:
            continue
        if not _is_number(value):
            raise PepError(f"{where}: '{key}' is {'missing' if value is None else repr(value)}, "
                           "expected a number (percent)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(cfg: dict) -> dict[str, dict]:
    """{variant: val.json} for the variants evaluated so far, in the paper's order; a PepError
    naming the folder when there are none."""
    folder = output_path(cfg, "metrics")
    found = {}
    for variant in VARIANTS:
        path = folder / variant / "val.json"
        if not path.exists():
            continue
        metrics = read_json(path, "metrics file")
        if not isinstance(metrics, dict):
            raise PepError(f"{path}: expected a JSON object of COCO stats")
        _check_stats(metrics, str(path), allow_missing=False)
        std = metrics.get("std")
        if std is not None and not isinstance(std, dict):
            raise PepError(f"{path}: 'std' must map stat names to numbers")
        found[variant] = metrics
    if not found:
        raise PepError(f"{folder}: no metrics found (expected <variant>/val.json for any of "
                       f"{', '.join(VARIANTS)}); run `pep evaluate --variant <name>` first")
    return found


def read_bootstrap(cfg: dict, variant: str) -> dict | None:
    path = output_path(cfg, "metrics", variant) / "val_bootstrap.json"
    if not path.exists():
        return None
    data = read_json(path, "bootstrap file")
    if not isinstance(data, dict):
        raise PepError(f"{path}: expected a JSON object")
    for key in ("B", "seed", "image_ids_hash", "AP"):
        if key not in data:
            raise PepError(f"{path}: missing key '{key}'")
    if not isinstance(data["AP"], list) or not data["AP"] or not all(map(_is_number, data["AP"])):
        raise PepError(f"{path}: 'AP' must be a non-empty list of numbers")
    if len(data["AP"]) != data["B"]:
        raise PepError(f"{path}: 'B' is {data['B']} but 'AP' holds {len(data['AP'])} values")
    return data
