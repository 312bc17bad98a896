"""`pep tables`: the paper's Table 2 (ablation) and Table 1 (comparison), from the metrics files.

Reads only what evaluation wrote and what the project ships:

  metrics/<variant>/val.json            mask stats (percent; mean over seeds, `std` with several)
  metrics/<variant>/val_bootstrap.json  AP per bootstrap resample of the val images (optional)
  metrics/<variant>/test-dev.json       test-dev scored locally (the synthetic set; on real COCO
                                        it holds no stats and is skipped)
  reports/test-dev-server/<variant>.json  the COCO server's answer for a submission, committed by
                                        a person (format below)
  pep/reports/published.yaml            the paper's Table 2 and the published rows of Table 1

and writes reports/tables/{ablation,comparison}.{md,tex,csv}: Markdown for reading, LaTeX
(booktabs, through pandas' Styler) for papers, CSV with plain numbers for scripts.

reports/test-dev-server/<variant>.json, one per submitted variant, percent as the server shows
them (the six keys are required; the rest of the 12 COCO stats may be added):

  {"AP": 40.1, "AP50": 61.0, "AP75": 43.5, "APs": 18.0, "APm": 43.9, "APl": 59.1,
   "submission": "detections_test-dev2017_pep-pep_results.zip", "date": "2026-12-01"}

Only those rows count as COCO test-dev results and are ranked (bold = best) among the published
ones; a row measured on another data set is shown below a rule, labelled with its data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from pep.config import VARIANTS, output_path
from pep.errors import PepError
from pep.jsonfile import StagedOutputs, read_json, read_yaml, staged_into


METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
HEADERS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APS", "APm": "APM", "APl": "APL"}
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
SERVER_FOLDER = ("reports", "test-dev-server")
TABLES_FOLDER = ("reports", "tables")
MISSING = "–"
COST_DIGITS = {"params (M)": 2, "GFLOPs/img": 2}  # the other columns show one decimal
CI_LEVEL = 95
TABLE_NAMES = ("ablation", "comparison", "mechanisms")


@dataclass
class Table:
    """One table: display strings, which cells are bold, the plain numbers for the CSV, and the
    words around it. `groups` maps a row position to the label of a block that starts there,
    set apart from the rows above by a rule."""
    name: str
    cells: pd.DataFrame
    bold: pd.DataFrame
    numbers: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)
    groups: dict[int, str] = field(default_factory=dict)
    text_columns: int = 1  # the leading columns of words (left-aligned), before the numbers
    follow: list["Table"] = field(default_factory=list)  # shown after it, in the same files


# ----------------------------------------------------------------------------- inputs

def dataset_name(cfg: dict) -> str:
    source = cfg["data"]["source"]
    if source == "synth":
        return "the synthetic crowded-shapes set"
    if source == "coco":
        return "COCO 2017"
    return f"a custom COCO-format data set ({cfg['data']['root']})"


def read_published(path: str | Path = PUBLISHED_FILE) -> dict:
    path = Path(path)
    data = read_yaml(path, "published numbers")
    for section in ("paper", "ablation", "comparison"):
        if not isinstance(data, dict) or not isinstance(data.get(section), dict):
            raise PepError(f"{path}: missing section '{section}'")
    for variant, row in data["ablation"].get("rows", {}).items():
        _check_stats(row, f"{path}: ablation.rows.{variant}", allow_missing=False)
    for i, row in enumerate(data["comparison"].get("rows", [])):
        for key in ("method", "backbone", "group", "citation", "metrics"):
            if key not in row:
                raise PepError(f"{path}: comparison.rows[{i}] has no '{key}'")
        if row["group"] not in data["comparison"].get("groups", []):
            raise PepError(f"{path}: comparison.rows[{i}] ({row['method']}): group {row['group']!r} is "
                           f"not one of comparison.groups {data['comparison'].get('groups', [])}")
        _check_stats(row["metrics"], f"{path}: comparison.rows[{i}].metrics", allow_missing=True)
    return data


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


def _seeds(metrics: dict) -> int:
    seeds = metrics.get("seeds")
    return len(seeds) if isinstance(seeds, list) and seeds else 1


# ----------------------------------------------------------------------------- formatting

def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None or not math.isfinite(value) or (value < 0 and not signed):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _valid(value: Any) -> float | None:
    """A stat as a float, None for COCOeval's -1 (no ground truth in that range) or a gap."""
    return float(value) if _is_number(value) and value >= 0 else None


def _best(values: list[float | None], lower_is_better: bool = False, digits: int = 1) -> list[bool]:
    present = [v for v in values if v is not None]
    if len(present) < 2:  # nothing to rank against
        return [False] * len(values)
    target = min(present) if lower_is_better else max(present)
    # equal at the shown precision counts as a tie
    return [v is not None and round(v, digits) == round(target, digits) for v in values]


def _percentile_interval(differences: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(differences, [(100 - CI_LEVEL) / 2, 100 - (100 - CI_LEVEL) / 2])
    return float(low), float(high)


# ----------------------------------------------------------------------------- Table 2

def ablation_table(cfg: dict, metrics: dict[str, dict], published: dict) -> Table:
    variants = list(metrics)
    missing = [v for v in VARIANTS if v not in metrics]
    n_seeds = max(_seeds(m) for m in metrics.values())
    has_baseline = "baseline" in metrics
    notes = []

    intervals, boot_note = _gain_intervals(cfg, metrics) if has_baseline else ({}, "")
    rows, numbers, costs = [], [], []
    columns = (["variant"] + [HEADERS[k] for k in METRIC_KEYS] + ["ΔAP"]
               + ["params (M)", "GFLOPs/img", "ms/img"])
    train_hours = max(float(m.get("train_time_s") or 0) for m in metrics.values()) >= 3 * 3600
    train_column = "train (h)" if train_hours else "train (min)"
    columns.append(train_column)

    base_ap = _valid(metrics["baseline"]["AP"]) if has_baseline else None
    for variant in variants:
        m = metrics[variant]
        std = m.get("std") or {}
        cell = {"variant": variant}
        number = {"variant": variant, "seeds": _seeds(m)}
        for key in METRIC_KEYS:
            mean = _valid(m[key])
            s = _valid(std.get(key)) if _seeds(m) > 1 else None
            cell[HEADERS[key]] = _fmt(mean) + (f" ± {s:.1f}" if s is not None and mean is not None else "")
            number[key] = mean
            number[f"{key}_std"] = s
        delta = None
        if base_ap is not None and variant != "baseline" and _valid(m["AP"]) is not None:
            delta = _valid(m["AP"]) - base_ap
        low_high = intervals.get(variant)
        cell["ΔAP"] = MISSING if delta is None else (
            _fmt(delta, signed=True) + (f" [{low_high[0]:+.1f}, {low_high[1]:+.1f}]" if low_high else ""))
        number["delta_AP"] = delta
        number["delta_AP_ci_low"], number["delta_AP_ci_high"] = low_high or (None, None)
        params = m.get("params")
        flops = m.get("flops_per_image")
        cost = {"params (M)": params / 1e6 if _is_number(params) else None,
                "GFLOPs/img": flops / 1e9 if _is_number(flops) else None,
                "ms/img": m.get("infer_ms_per_image") if _is_number(m.get("infer_ms_per_image")) else None}
        train_s = m.get("train_time_s") if _is_number(m.get("train_time_s")) else None
        cost[train_column] = None if train_s is None else train_s / (3600 if train_hours else 60)
        for name, value in cost.items():
            cell[name] = _fmt(value, COST_DIGITS.get(name, 1))
        costs.append(cost)
        number.update({"params_M": cost["params (M)"], "gflops_per_image": cost["GFLOPs/img"],
                       "infer_ms_per_image": cost["ms/img"], "train_time_s": train_s,
                       "images_seen": m.get("images_seen")})
        paper = published["ablation"]["rows"].get(variant)
        for key in METRIC_KEYS:
            theirs = paper[key] if paper else None
            number[f"paper_{key}"] = theirs
            ours = number[key]
            number[f"diff_{key}"] = None if theirs is None or ours is None else round(ours - theirs, 3)
        rows.append(cell)
        numbers.append(number)

    cells = pd.DataFrame(rows, columns=columns)
    bold = pd.DataFrame(False, index=cells.index, columns=columns)
    for key in METRIC_KEYS:
        bold[HEADERS[key]] = _best([n[key] for n in numbers])
    bold["ΔAP"] = _best([n["delta_AP"] for n in numbers])
    for name in costs[0]:  # lower is better
        bold[name] = _best([c[name] for c in costs], lower_is_better=True, digits=COST_DIGITS.get(name, 1))

    comparable = cfg["data"]["source"] == "coco"
    seeds_text = ("one seed" if n_seeds == 1 else f"mean ± std over {n_seeds} seeds")
    caption = (f"Ablation (the paper's Table 2): mask AP (%) on the val split of {dataset_name(cfg)} "
               f"(profile '{cfg['profile']}'), {seeds_text}. "
               + ("ΔAP: gain over baseline, with its 95% interval from a paired bootstrap over the "
                  "val images (details below). " if intervals else "")
               + "Bold: best per column (for params, GFLOPs, inference time and training time the lowest).")
    if has_baseline:
        notes.append("ΔAP: AP gain over baseline" + (boot_note and f"; {boot_note}"))
    else:
        notes.append("No baseline metrics (metrics/baseline/val.json), so no ΔAP column values.")
    if missing:
        notes.append(f"Not evaluated yet, left out: {', '.join(missing)}.")
    notes.append("Cost: params and GFLOPs (FLOPs counted by torch.utils.flop_counter on one val "
                 "image), inference ms per image and training wall time, as measured on this "
                 "pipeline's hardware.")
    return Table("ablation", cells, bold, pd.DataFrame(numbers), caption, notes,
                 follow=[_paper_ablation(cfg, numbers, published, comparable)])


def _paper_ablation(cfg: dict, numbers: list[dict], published: dict, comparable: bool) -> Table:
    """The paper's Table 2 for the variants we have, each cell "theirs (ours - theirs)"."""
    columns = ["variant"] + [HEADERS[k] for k in METRIC_KEYS]
    cells = pd.DataFrame([{"variant": n["variant"], **{
        HEADERS[k]: MISSING if n[f"paper_{k}"] is None else
        f"{n[f'paper_{k}']:.1f} ({_fmt(n[f'diff_{k}'], signed=True)})" for k in METRIC_KEYS}}
        for n in numbers], columns=columns)
    source = published["ablation"]
    caption = (f"The paper's Table 2 beside ours: {source['source']}, mask AP (%) on "
               f"{source['dataset']} (ResNet-101-FPN, full schedule); in brackets ours - theirs, ours "
               f"measured on {dataset_name(cfg)} (profile '{cfg['profile']}')"
               + ("." if comparable else ": a different data set, model size and schedule, so these "
                  "differences are not comparable; they only show the distance to the paper's setting."))
    return Table("ablation-paper", cells, pd.DataFrame(False, index=cells.index, columns=columns),
                 pd.DataFrame(), caption)


def _gain_intervals(cfg: dict, metrics: dict[str, dict]) -> tuple[dict[str, tuple[float, float]], str]:
    """95% percentile intervals of each variant's AP gain over baseline from the paired
    bootstrap files, and the sentence that says how they were made (or why they are absent)."""
    boots = {v: read_bootstrap(cfg, v) for v in metrics}
    base = boots.get("baseline")
    lacking = [v for v, b in boots.items() if b is None]
    if base is None or len(lacking) == len(boots):
        return {}, ("no 95% intervals: no bootstrap file (metrics/<variant>/val_bootstrap.json) "
                    f"for {', '.join(lacking)}")
    intervals, unpaired = {}, []
    for variant, boot in boots.items():
        if variant == "baseline" or boot is None:
            continue
        if any(boot[k] != base[k] for k in ("B", "seed", "image_ids_hash")):
            unpaired.append(variant)
            continue
        ours, theirs = np.asarray(boot["AP"], float), np.asarray(base["AP"], float)
        keep = (ours >= 0) & (theirs >= 0)
        if not keep.any():
            continue
        spread = _seed_spread(metrics[variant], metrics["baseline"])
        if spread is None:
            intervals[variant] = _percentile_interval(ours[keep] - theirs[keep])
        else:  # images' and seeds' variances add: they are independent sources of noise
            seed_var, df = spread
            gain = _valid(metrics[variant]["AP"]) - _valid(metrics["baseline"]["AP"])
            half = float(scipy.stats.t.ppf(0.5 + CI_LEVEL / 200, df)) * math.sqrt(
                float(np.var(ours[keep] - theirs[keep], ddof=1)) + seed_var)
            intervals[variant] = (gain - half, gain + half)
    n_seeds = max(_seeds(m) for m in metrics.values())
    if n_seeds > 1:
        text = (f"[a, b]: {CI_LEVEL}% interval of the gain in mean AP over seeds, counting both sources "
                f"of noise: the val images' (the variance of the gain over {base['B']} paired bootstrap "
                f"resamples of the images, seed {base['seed']}, the same draws for every variant) plus "
                "the seeds' (std²/seeds of each variant's per-seed AP, baseline's and its own), with "
                "Student's t at the Welch-Satterthwaite degrees of freedom of the seed terms: "
                "gain ± t·sqrt(var_images + s²/n + s_base²/n_base)")
    else:
        text = (f"[a, b]: {CI_LEVEL}% interval of the gain from a paired bootstrap over the val images "
                f"({base['B']} resamples with replacement, seed {base['seed']}; the same draws for every "
                "variant; percentile method); one seed: it covers image sampling only, not "
                "seed-to-seed variation")
    others = [v for v in lacking if v != "baseline"]
    if others:
        text += f"; no interval for {', '.join(others)} (no val_bootstrap.json)"
    if unpaired:
        text += (f"; no interval for {', '.join(unpaired)}: its bootstrap drew from other images "
                 "or with other settings than baseline's")
    return intervals, text + "."


# ----------------------------------------------------------------------------- mechanisms

# (column, rate key in mechanisms.json, percent?) in the report's order: perceiving, excavating,
# purifying, then the AP of the same models with a module's inference off
MECHANISM_COLUMNS = (
    ("originals find (%)", "originals_recall", True),
    ("detections find (%)", "final_recall", True),
    ("mined / img", "mined_per_image", False),
    ("mined det.: new TP (%)", "mined_new_tp_share", True),
    ("dup. (%)", "mined_duplicate_share", True),
    ("bg. (%)", "mined_background_share", True),
    ("misses recovered (%)", "recovered_share", True),
    ("merge recall (%)", "merge_recall", True),
    ("false merges (%)", "false_merge_rate", True),
    ("fused (% found)", "fused_share_of_found", True),
    ("lost by de-dup (%)", "lost_by_dedup_share", True),
    ("dup. left / img", "duplicates_left_per_image", False),
)
MECHANISM_AP = (("AP", "as_trained"), ("AP no mining", "no_mining"), ("AP Matrix NMS", "matrix_nms"),
                ("AP neither", "neither"))


def read_mechanisms(cfg: dict) -> dict[str, dict]:
    """{variant: mechanisms.json} for the variants that have one, in the paper's order."""
    found = {}
    for variant in VARIANTS:
        path = output_path(cfg, "metrics", variant, "mechanisms.json")
        if not path.exists():
            continue
        data = read_json(path, "mechanism report")
        for key in ("mean", "per_seed", "data", "seeds"):
            if not isinstance(data, dict) or key not in data:
                raise PepError(f"{path}: missing key '{key}' (written by `pep mechanisms`)")
        found[variant] = data
    return found


def mechanisms_table(cfg: dict, reports: dict[str, dict]) -> Table:
    """What each module finds, merges and loses on val (pep/engine/mechanisms.py), mean ± std
    over seeds; a module's columns are empty for the variants without it."""
    columns = ["variant"] + [c for c, _, _ in MECHANISM_COLUMNS] + [c for c, _ in MECHANISM_AP]
    rows, numbers = [], []
    for variant, report in reports.items():
        rates, ap = report["mean"]["rates"], report["mean"]["ap"]
        cell, number = {"variant": variant}, {"variant": variant, "seeds": len(report["seeds"])}
        for name, key, percent in MECHANISM_COLUMNS:
            value = rates.get(key)
            scale = 100 if percent else 1
            mean = None if value is None else value["mean"] * scale
            std = None if value is None or "std" not in value else value["std"] * scale
            cell[name] = _fmt(mean) + (f" ± {std:.1f}" if std is not None else "")
            number[key], number[f"{key}_std"] = mean, std
        for name, switch in MECHANISM_AP:
            value = ap.get(switch)
            cell[name] = MISSING if value is None else (
                _fmt(value["mean"]) + (f" ± {value['std']:.1f}" if "std" in value else ""))
            number[f"AP_{switch}"] = None if value is None else value["mean"]
            number[f"AP_{switch}_std"] = None if value is None else value.get("std")
        rows.append(cell)
        numbers.append(number)
    first = next(iter(reports.values()))
    hidden = ", ".join(f"{split} {100 * d['share']:.1f}% ({d['without_own_cell']} of {d['instances']})"
                       for split, d in first["data"].items() if d["share"] is not None)
    n_seeds = max(len(r["seeds"]) for r in reports.values())
    caption = (f"Mechanisms on the val split of {dataset_name(cfg)}: what each module finds, merges and "
               f"loses on the models' own outputs, {'one seed' if n_seeds == 1 else f'mean ± std over {n_seeds} seeds'}"
               f"; a match is mask IoU >= {first.get('match_iou', 0.5)} with the same class.")
    notes = [
        "originals / detections find: instances matched by some original descriptor (perceiving), by "
        "some final detection.",
        "mined det.: the mined descriptors' final detections that are new true positives (an instance no "
        "original matches), duplicates, background; misses recovered: the instances no original matches "
        "that a mined descriptor matches.",
        "merge recall / false merges: of same-class descriptor pairs on one instance, on two instances, "
        "the share the merge joins; fused: instances joined into another's group, per instance found by "
        "a descriptor; lost by de-dup: instances some descriptor matches and no detection does.",
        "AP no mining / Matrix NMS / neither: the same models with excavating's mining off, with Matrix "
        "NMS in place of purifying's merge, with both.",
        f"Instances without a grid cell of their own (each cell of their centre region won by a smaller "
        f"instance): {hidden}.",
    ]
    cells = pd.DataFrame(rows, columns=columns)
    return Table("mechanisms", cells, pd.DataFrame(False, index=cells.index, columns=columns),
                 pd.DataFrame(numbers), caption, notes)


def _seed_spread(ours: dict, base: dict) -> tuple[float, float] | None:
    """Variance of the difference of two means over seeds (s²/n + s_base²/n_base) and its
    Welch-Satterthwaite degrees of freedom; None unless both have several seeds and a std."""
    terms = []
    for m in (ours, base):
        std = _valid((m.get("std") or {}).get("AP"))
        if _seeds(m) < 2 or std is None:
            return None
        terms.append((std ** 2 / _seeds(m), _seeds(m) - 1))
    var = sum(v for v, _ in terms)
    if var == 0:
        return 0.0, float(min(n for _, n in terms))
    return var, var ** 2 / sum(v ** 2 / n for v, n in terms)


# ----------------------------------------------------------------------------- Table 1

def read_server_results(cfg: dict, variant: str) -> dict | None:
    path = output_path(cfg, *SERVER_FOLDER) / f"{variant}.json"
    if not path.exists():
        return None
    data = read_json(path, "COCO server results")
    _check_stats(data, str(path), allow_missing=False)
    if all(data[k] <= 1 for k in METRIC_KEYS):
        raise PepError(f"{path}: the stats look like fractions; write them in percent, as the COCO "
                       "server shows them (e.g. AP 40.9)")
    return data


GROUP_LABELS = {"two-stage": "Two-stage methods", "one-stage": "One-stage methods"}
TEXT_COLUMNS = ("method", "backbone", "citation", "reported by", "data")


def comparison_table(cfg: dict, metrics: dict[str, dict], published: dict) -> Table:
    """The paper's Table 1 in its blocks (two-stage, then one-stage methods), our COCO server
    rows among the one-stage ones and ranked with them; rows of another data set kept apart."""
    section = published["comparison"]
    by_group: dict[str, list[dict]] = {group: [] for group in section["groups"]}
    for r in section["rows"]:
        ref = f" [{r['ref']}]" if r.get("ref") else ""
        by_group[r["group"]].append({
            "method": r["method"], "backbone": r["backbone"], "citation": r["citation"],
            "reported by": f"PEP paper, Table 1{ref}", "data": section["dataset"],
            **{k: _valid(r["metrics"].get(k)) for k in METRIC_KEYS}})
    ours_group = "one-stage" if "one-stage" in by_group else section["groups"][-1]  # PEP is one-stage
    for variant in VARIANTS:
        server = read_server_results(cfg, variant)
        if server is not None:
            by_group[ours_group].append({
                "method": f"ours: {variant}", "backbone": _backbone(cfg), "citation": "this reproduction",
                "reported by": "COCO server", "data": section["dataset"],
                **{k: _valid(server[k]) for k in METRIC_KEYS}})
    groups, ranked, row_groups = {}, [], []
    for group, rows in by_group.items():
        if rows:
            groups[len(ranked)] = GROUP_LABELS.get(group, group)
            ranked += rows
            row_groups += [group] * len(rows)
    apart = []
    for variant in VARIANTS:
        path = output_path(cfg, "metrics", variant) / "test-dev.json"
        if not path.exists():
            continue
        local = read_json(path, "test-dev metrics")
        if isinstance(local, dict) and not any(key in local for key in METRIC_KEYS):
            continue  # a submission without a local ground truth (real COCO): the server scores it
        _check_stats(local, str(path), allow_missing=False)
        apart.append({"method": f"ours: {variant}", "backbone": _backbone(cfg), "citation": "this reproduction",
                      "reported by": "scored locally", "data": f"{_short_dataset(cfg)} test-dev",
                      **{k: _valid(local[k]) for k in METRIC_KEYS}})

    columns = [*TEXT_COLUMNS] + [HEADERS[k] for k in METRIC_KEYS]
    rows = ranked + apart
    cells = pd.DataFrame([{**{c: r[c] for c in TEXT_COLUMNS},
                           **{HEADERS[k]: _fmt(r[k]) for k in METRIC_KEYS}} for r in rows], columns=columns)
    bold = pd.DataFrame(False, index=cells.index, columns=columns)
    for key in METRIC_KEYS:  # ranked among the COCO test-dev rows only
        bold.loc[: len(ranked) - 1, HEADERS[key]] = _best([r[key] for r in ranked])
    numbers = pd.DataFrame([{**r, "group": row_groups[i] if i < len(ranked) else "other data set",
                             "ranked": i < len(ranked)} for i, r in enumerate(rows)],
                           columns=[*TEXT_COLUMNS, "group", *METRIC_KEYS, "ranked"])

    if apart:
        groups[len(ranked)] = (f"Measured on another data set ({_short_dataset(cfg)}), not ranked "
                               "with the COCO rows")
    published_rows = sum(r["reported by"].startswith("PEP paper") for r in ranked)
    notes = [f"Every published row is reported by the PEP paper ({published['paper']['citation']}, "
             f"Table 1: {published_rows} rows, {section.get('methods_in_paper', '?')} methods besides "
             "PEP), with the citation of the method's own paper and its reference number in the PEP "
             f"paper; {MISSING}: a cell the paper leaves empty."]
    if not any(r["reported by"] == "COCO server" for r in ranked):
        notes.append("No COCO test-dev result of ours yet: after scoring a submission on the COCO "
                     f"server, commit its numbers as {'/'.join(SERVER_FOLDER)}/<variant>.json "
                     "(format: pep/reports/tables.py).")
    if apart:
        notes.append(f"Rows below the rule come from {dataset_name(cfg)}, scored locally against its "
                     "private test-dev ground truth; they are not comparable with COCO numbers.")
    caption = (f"Comparison (the paper's Table 1): mask AP (%) on {section['dataset']}. Bold: best "
               "per column among the COCO rows.")
    return Table("comparison", cells, bold, numbers, caption, notes, groups, text_columns=len(TEXT_COLUMNS))


def _backbone(cfg: dict) -> str:
    return f"R{cfg['model']['backbone']['depth']}-FPN"


def _short_dataset(cfg: dict) -> str:
    return {"synth": "synthetic", "coco": "COCO 2017"}.get(cfg["data"]["source"], "custom")


# ----------------------------------------------------------------------------- rendering

def to_markdown(table: Table) -> str:
    out = [f"**{table.caption}**", ""]
    starts = sorted({0, *table.groups})
    for start, end in zip(starts, starts[1:] + [len(table.cells)]):
        if start in table.groups:
            out += ["", f"*{table.groups[start]}:*", ""]
        out.append("| " + " | ".join(_md(c) for c in table.cells.columns) + " |")
        out.append("|" + "|".join(":---" if i < table.text_columns else "---:"
                                  for i in range(len(table.cells.columns))) + "|")
        for i in range(start, end):
            row = [(f"**{_md(v)}**" if table.bold.iat[i, j] and v != MISSING else _md(v))
                   for j, v in enumerate(table.cells.iloc[i])]
            out.append("| " + " | ".join(row) + " |")
    if table.notes:
        out += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(out) + "\n" + "".join("\n" + to_markdown(t) for t in table.follow)


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "−": "-"}


def latex_escape(text: Any) -> str:
    """Text as pdflatex reads it without extra packages: TeX's specials escaped, and the few
    non-ASCII signs the tables use written as TeX."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs table through pandas' Styler; bold through its CSS-to-LaTeX conversion."""
    cells = table.cells.map(latex_escape)
    cells.columns = [latex_escape(c) for c in cells.columns]
    bold = table.bold.copy()
    bold.columns = cells.columns
    styler = cells.style.hide(axis="index")
    styler = styler.apply(lambda _: np.where(bold.to_numpy(), "font-weight: bold;", ""), axis=None)
    body = styler.to_latex(hrules=True, convert_css=True, environment="table", position="htbp",
                           position_float="centering", label=f"tab:{table.name}",
                           caption=latex_escape(table.caption),
                           column_format="l" * table.text_columns + "r" * (len(cells.columns) - table.text_columns))
    lines = body.splitlines()
    if table.groups:
        # A rule and the block's label before each group (Styler writes one line per row).
        first_row = lines.index(r"\midrule") + 1
        for position in sorted(table.groups, reverse=True):
            label = latex_escape(table.groups[position])
            rule = [] if position == 0 else [r"\midrule"]  # the header's rule is there already
            lines[first_row + position:first_row + position] = [
                *rule, rf"\multicolumn{{{len(cells.columns)}}}{{l}}{{\emph{{{label}}}}} \\"]
    if table.notes:
        end = lines.index(r"\end{table}")
        notes = " ".join(latex_escape(n) for n in table.notes)
        lines[end:end] = [rf"\par\smallskip{{\footnotesize {notes}\par}}"]
    return "\n".join(lines) + "\n" + "".join("\n" + to_latex(t) for t in table.follow)


def table_files(cfg: dict) -> list[Path]:
    """reports/tables/<name>.{md,tex,csv} of both tables."""
    folder = output_path(cfg, *TABLES_FOLDER)
    return [folder / f"{name}.{fmt}" for name in TABLE_NAMES for fmt in ("md", "tex", "csv")]


def write_tables(cfg: dict, published_path: str | Path = PUBLISHED_FILE,
                 outputs: StagedOutputs | None = None) -> dict[str, Table]:
    """Build both tables and write reports/tables/<name>.{md,tex,csv}; returns the tables.
    Staged in `outputs` for the caller to publish with its other files, or published here."""
    with staged_into(outputs, table_files(cfg), "`pep tables`") as staged:
        published = read_published(published_path)
        metrics = read_metrics(cfg)
        tables = {t.name: t for t in (ablation_table(cfg, metrics, published),
                                      comparison_table(cfg, metrics, published))}
        reports = read_mechanisms(cfg)
        if reports:
            tables["mechanisms"] = mechanisms_table(cfg, reports)
        folder = output_path(cfg, *TABLES_FOLDER)
        for table in tables.values():
            staged.write_text(folder / f"{table.name}.md", to_markdown(table))
            staged.write_text(folder / f"{table.name}.tex", to_latex(table))
            staged.write_text(folder / f"{table.name}.csv",
                              table.numbers.to_csv(index=False, float_format="%.6g"))
    return tables
