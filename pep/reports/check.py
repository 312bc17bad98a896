"""`pep check-results`: measured val metrics against the expected values the project stores.

As detectron2's EXPECTED_RESULTS: pep/reports/expected_results.yaml holds, per profile (and, on
the synthetic set, per crowding level: `default/none`) and per variant, an expected value and an
absolute tolerance (percentage points) for some of metrics/<variant>/val.json's keys:

  default/none:
    pep:
      AP: {expected: 31.2, tolerance: 1.5}
      AP50: {expected: 55.0, tolerance: 2.0}

Every listed number is compared; the command prints expected / actual / ok and exits 1 naming
each number that drifted outside its tolerance. A missing metrics file, or a profile without
expected values, is an error (exit 2), never a silent pass.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from pep.config import VARIANTS, output_path
from pep.errors import PepError
from pep.jsonfile import read_json, read_yaml

EXPECTED_FILE = Path(__file__).with_name("expected_results.yaml")


@dataclass
class Check:
    variant: str
    key: str
    expected: float
    tolerance: float
    actual: float

    @property
    def ok(self) -> bool:
        return abs(self.actual - self.expected) <= self.tolerance + 1e-9  # float noise at the edge

    def describe(self) -> str:
        return (f"{self.variant} {self.key} = {self.actual:.2f}, expected {self.expected:.2f} "
                f"± {self.tolerance:.2f} (off by {self.actual - self.expected:+.2f})")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def results_key(cfg: dict) -> str:
    """The section of the expected-results file that a run of `cfg` answers to: its profile, and
    on the synthetic set its crowding level (each level is another data set)."""
    if cfg["data"]["source"] == "synth":
        return f"{cfg['profile']}/{cfg['data']['synth']['crowding']}"
    return cfg["profile"]


def read_expected(path: str | Path, profile: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{variant: {key: (expected, tolerance)}} of section `profile` (a results_key); a PepError
    naming the entry at fault."""
    path = Path(path)
    data = read_yaml(path, "expected-results file")
    if not isinstance(data, dict):
        raise PepError(f"{path}: expected a mapping of profiles at the top level")
    entries = data.get(profile)
    if not entries:
        raise PepError(f"{path}: no expected values for profile '{profile}'; measure a run, then "
                       "write its numbers there with a tolerance")
    if not isinstance(entries, dict):
        raise PepError(f"{path}: {profile}: expected a mapping of variants")
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for variant, keys in entries.items():
        where = f"{path}: {profile}.{variant}"
        if variant not in VARIANTS:
            raise PepError(f"{where}: unknown variant (expected one of: {', '.join(VARIANTS)})")
        if not isinstance(keys, dict) or not keys:
            raise PepError(f"{where}: expected a mapping of metric names to {{expected, tolerance}}")
        out[variant] = {}
        for key, spec in keys.items():
            if (not isinstance(spec, dict) or set(spec) != {"expected", "tolerance"}
                    or not _number(spec["expected"]) or not _number(spec["tolerance"]) or spec["tolerance"] < 0):
                raise PepError(f"{where}.{key}: expected {{expected: <number>, tolerance: <number >= 0>}}, "
                               f"got {spec!r}")
            out[variant][key] = (float(spec["expected"]), float(spec["tolerance"]))
    return out


def check_results(cfg: dict, expected_path: str | Path = EXPECTED_FILE) -> list[Check]:
    """One Check per expected number, against metrics/<variant>/val.json of the current profile."""
    expected = read_expected(expected_path, results_key(cfg))
    checks = []
    for variant, keys in expected.items():
        path = output_path(cfg, "metrics", variant) / "val.json"
        if not path.exists():
            raise PepError(f"{path}: metrics file not found; run `pep evaluate --variant {variant}` "
                           f"(profile '{cfg['profile']}') first")
        metrics = read_json(path, "metrics file")
        if not isinstance(metrics, dict):
            raise PepError(f"{path}: expected a JSON object of COCO stats")
        for key, (value, tolerance) in keys.items():
            actual = metrics.get(key)
            if not _number(actual):
                raise PepError(f"{path}: '{key}' is {'missing' if actual is None else repr(actual)}; "
                               f"{Path(expected_path).name} expects a number for {variant} {key}")
            checks.append(Check(variant, key, value, tolerance, float(actual)))
    return checks


def format_checks(checks: list[Check]) -> str:
    rows = [("variant", "key", "expected", "tolerance", "actual", "ok")]
    rows += [(c.variant, c.key, f"{c.expected:.2f}", f"{c.tolerance:.2f}", f"{c.actual:.2f}",
              "ok" if c.ok else "DRIFT") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def check_command(cfg: dict, expected: str | Path | None = None) -> int:
    """`pep check-results`: the table of checks; exit 1 naming each drifted number."""
    checks = check_results(cfg, expected or EXPECTED_FILE)
    print(format_checks(checks))
    drifted = [c for c in checks if not c.ok]
    for check in drifted:
        print(f"pep: drifted: {check.describe()}", file=sys.stderr)
    return 1 if drifted else 0
