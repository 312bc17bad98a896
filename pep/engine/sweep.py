"""`pep sweep`: trained models re-scored on val under other inference settings, over seeds.

How the inference defaults in params.yaml were chosen: every combination of the values given
(`--set model.purify.then_matrix_nms=false,true --set model.purify.join_mask_iou=0,0.3`), each
applied to every seed's model of a variant, scored with pycocotools on val. Only settings read
at inference (stage_settings.INFERENCE_ONLY, and the variant's `dedup`) can be swept: anything
else would need the models retrained. Writes one CSV row per (combination, seed) and prints the
mean and standard deviation over seeds of each combination, best first.
"""

from __future__ import annotations

import copy
import itertools
import logging
from pathlib import Path

import pandas as pd
import torch
import yaml

from pep import evaluation
from pep.config import SECTIONS, validate_params
from pep.data.coco import build_dataset
from pep.engine.evaluate import predict
from pep.engine.train import load_trained
from pep.errors import PepError
from pep.jsonfile import StagedOutputs
from pep.stage_settings import INFERENCE_ONLY

log = logging.getLogger(__name__)


def parse_options(pairs: list[str], variant: str) -> dict[str, list]:
    """`KEY=V1,V2,...` pairs -> {key: [values]}, values read as YAML scalars; a clear error for
    a key that is not an inference setting."""
    options = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        key = key.strip()
        if not sep or not values:
            raise PepError(f"--set {pair!r}: expected KEY=VALUE[,VALUE...]")
        allowed = key == f"variants.{variant}.dedup" or any(key == k or key.startswith(k + ".") for k in INFERENCE_ONLY)
        if not allowed:
            raise PepError(f"--set {key}: not read at inference (changing it needs the models retrained); "
                           f"sweepable: variants.{variant}.dedup and {', '.join(INFERENCE_ONLY)}")
        options[key] = [yaml.safe_load(v) for v in values.split(",")]
    return options


def _set(cfg: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    tree = cfg
    for part in parents:
        if not isinstance(tree.get(part), dict):
            raise PepError(f"--set {key}: params.yaml has no section '{part}' there")
        tree = tree[part]
    if last not in tree:
        raise PepError(f"--set {key}: params.yaml has no key '{last}' there")
    tree[last] = value


def combinations(cfg: dict, options: dict[str, list]) -> list[tuple[dict, dict]]:
    """(settings, cfg) for every combination, each cfg checked against the params schema."""
    out = []
    for values in itertools.product(*options.values()):
        settings = dict(zip(options, values))
        combo = copy.deepcopy(cfg)
        for key, value in settings.items():
            _set(combo, key, value)
        problems = validate_params({**{s: combo[s] for s in SECTIONS}, "profile": "default", "profiles": {}})
        if problems:
            raise PepError(f"--set {settings}: " + "; ".join(problems))
        out.append((settings, combo))
    return out


def sweep(cfg: dict, variant: str, seeds: list[int], options: dict[str, list], out: Path,
          device="cpu", progress: bool = True) -> pd.DataFrame:
    combos = combinations(cfg, options)
    dataset = build_dataset(cfg, "val")
    rows = []
    for i, (settings, combo) in enumerate(combos, 1):
        for seed in seeds:
            model, _ = load_trained(combo, variant, seed, device)  # built with the combination's settings
            results, _ = predict(model, dataset, combo, torch.device(device), progress,
                                 name=f"sweep {variant} {i}/{len(combos)} seed {seed}")
            stats = evaluation.stats_in_percent(evaluation.evaluate(dataset.coco, results, "segm")["stats"])
            rows.append({**settings, "seed": seed, **{k: stats[k] for k in ("AP", "AP50", "AP75")},
                         "detections": len(results)})
            log.info("%s %s seed %d: AP %.2f", variant, settings, seed, stats["AP"])
    table = pd.DataFrame(rows)
    outputs = StagedOutputs([out], "`pep sweep`")
    with outputs:
        outputs.write_text(out, table.to_csv(index=False, float_format="%.4g"))
        outputs.publish()
    return table


def summary(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per combination, best mean AP first."""
    grouped = table.groupby(keys, dropna=False)["AP"]
    return (pd.DataFrame({"AP_mean": grouped.mean(), "AP_std": grouped.std(), "seeds": grouped.size()})
            .sort_values("AP_mean", ascending=False).reset_index())


def format_summary(table: pd.DataFrame, keys: list[str]) -> str:
    s = summary(table, keys)
    return s.to_string(index=False, float_format=lambda v: f"{v:.2f}") if len(s) else "(no rows)"


def sweep_command(cfg: dict, variant: str, seeds: list[int], pairs: list[str], out: Path,
                  progress: bool = True) -> int:
    """`pep sweep --set KEY=V1,V2 ...`: every combination, every seed; the summary, then the file."""
    from pep.distributed import choose_device

    options = parse_options(pairs, variant)
    table = sweep(cfg, variant, seeds, options, out, device=choose_device(cfg["train"]["device"]), progress=progress)
    print(format_summary(table, list(options)))
    print(f"every (combination, seed): {out}")
    return 0
