"""Table 2, the ablation: each variant's mask AP on val with its cost, the gain over baseline with
its 95% interval (paired bootstrap over the val images, plus the seeds' spread when there are
several), and the paper's Table 2 beside ours."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats

from pep.config import VARIANTS
from pep.reports.results import METRIC_KEYS, _is_number, dataset_name, read_bootstrap
from pep.reports.tables.table import HEADERS, MISSING, Table, _best, _fmt, _valid

COST_DIGITS = {"params (M)": 2, "GFLOPs/img": 2}  # the other columns show one decimal
CI_LEVEL = 95


def _seeds(metrics: dict) -> int:
    seeds = metrics.get("seeds")
    return len(seeds) if isinstance(seeds, list) and seeds else 1


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


# ----------------------------------------------------------------------------- ΔAP intervals

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


def _percentile_interval(differences: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(differences, [(100 - CI_LEVEL) / 2, 100 - (100 - CI_LEVEL) / 2])
    return float(low), float(high)
