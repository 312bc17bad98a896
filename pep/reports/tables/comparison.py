"""Table 1, the comparison: the published methods in the paper's blocks, our COCO server results
(reports/test-dev-server/<variant>.json) ranked among them, and rows scored locally on another
data set (metrics/<variant>/test-dev.json) kept apart.

reports/test-dev-server/<variant>.json, one per submitted variant, percent as the server shows
them (the six keys are required; the rest of the 12 COCO stats may be added):

  {"AP": 40.1, "AP50": 61.0, "AP75": 43.5, "APs": 18.0, "APm": 43.9, "APl": 59.1,
   "submission": "detections_test-dev2017_pep-pep_results.zip", "date": "2026-12-01"}
"""

from __future__ import annotations

import pandas as pd

from pep.config import VARIANTS, output_path
from pep.errors import PepError
from pep.jsonfile import read_json
from pep.reports.results import METRIC_KEYS, _check_stats, dataset_name
from pep.reports.tables.table import HEADERS, MISSING, Table, _best, _fmt, _valid

SERVER_FOLDER = ("reports", "test-dev-server")


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
                     "(format: pep/reports/tables/comparison.py).")
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
