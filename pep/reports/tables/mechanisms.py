"""The mechanisms table, from metrics/<variant>/mechanisms.json (`pep mechanisms`): what each
module finds, merges and loses on val, and the AP with a module's inference switched off."""

from __future__ import annotations

import pandas as pd

from pep.config import VARIANTS, output_path
from pep.errors import PepError
from pep.jsonfile import read_json
from pep.reports.results import dataset_name
from pep.reports.tables.table import MISSING, Table, _fmt

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
    # the instances that own no grid cell, stage by stage (excavating's cases)
    ("hidden: originals find (%)", "hidden_found_by_originals_share", True),
    ("hidden: key response (%)", "hidden_key_response_share", True),
    ("hidden: mined match (%)", "hidden_mined_match_share", True),
    ("hidden: detections find (%)", "hidden_found_final_share", True),
    ("hidden: dup. outranks (%)", "hidden_outranked_share", True),
    # purifying's similarity and what each de-duplication keeps that the other loses
    ("similarity AUC, overlapping", "similarity_auc_overlapping", False),
    ("similarity AUC, apart", "similarity_auc_apart", False),
    ("merge keeps, NMS loses (% found)", "merge_keeps_nms_loses_share", True),
    ("NMS keeps, merge loses (% found)", "nms_keeps_merge_loses_share", True),
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
        "hidden: of the val instances that own no grid cell (at the batch's size), those an original "
        "matches, those at whose centre excavating's key map exceeds key_threshold, those a mined "
        "descriptor matches, those a detection finds; dup. outranks: of (hidden instance, mined "
        "duplicate) pairs, the share where the duplicate scores above the instance's best mined match.",
        "similarity AUC: ROC AUC of purifying's similarity, same-instance against different-instance "
        "pairs of same-class descriptors, where the two masks overlap by IoU >= 0.5 (the pairs Matrix "
        "NMS decays) and where they do not; merge keeps, NMS loses: true instances found by the merge's "
        "detections and not by Matrix NMS's on the same descriptors (per instance a descriptor finds), "
        "and the reverse.",
        f"Instances without a grid cell of their own (each cell of their centre region won by a smaller "
        f"instance): {hidden}.",
    ]
    overlapping = ", ".join(f"{split} {100 * d['overlapping_share']:.1f}% ({d['overlapping_same_class']} of "
                            f"{d['instances']})" for split, d in first["data"].items() if d.get("overlapping_share") is not None)
    if overlapping:  # reports written before the overlap was counted lack it
        notes.append(f"Instances in a same-class pair whose boxes overlap by IoU >= "
                     f"{next(iter(first['data'].values()))['overlap_iou']}: {overlapping}.")
    cells = pd.DataFrame(rows, columns=columns)
    return Table("mechanisms", cells, pd.DataFrame(False, index=cells.index, columns=columns),
                 pd.DataFrame(numbers), caption, notes)
