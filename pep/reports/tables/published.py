"""pep/reports/published.yaml: the paper's Table 2 and the published rows of its Table 1, checked."""

from __future__ import annotations

from pathlib import Path

from pep.errors import PepError
from pep.jsonfile import read_yaml
from pep.reports.results import _check_stats

# in pep/reports/, one folder up (package data of pep.reports, as pyproject.toml ships it)
PUBLISHED_FILE = Path(__file__).parents[1] / "published.yaml"


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
