"""`pep check-results`: measured val metrics against expected values with tolerances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pep.cli import main
from pep.config import PROJECT_ROOT
from pep.errors import PepError
from pep.reports.check import EXPECTED_FILE, check_results, read_expected


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    for variant, ap in (("baseline", 30.0), ("pep", 34.2)):
        folder = tmp_path / "metrics" / variant
        folder.mkdir(parents=True)
        (folder / "val.json").write_text(json.dumps({"AP": ap, "AP50": ap + 20, "variant": variant}))
    return tmp_path


def write_expected(folder: Path, entries: dict, profile: str = "default") -> Path:
    path = folder / "expected.yaml"
    path.write_text(yaml.safe_dump({profile: entries}), encoding="utf-8")
    return path


def run(project: Path, expected: Path) -> int:
    return main(["check-results", "--params", str(project / "params.yaml"), "--expected", str(expected)])


def test_within_tolerance_passes(project, capsys):
    expected = write_expected(project, {
        "baseline": {"AP": {"expected": 30.5, "tolerance": 0.5}},  # exactly at the edge
        "pep": {"AP": {"expected": 34.0, "tolerance": 1.0}, "AP50": {"expected": 54.0, "tolerance": 0.5}}})
    assert run(project, expected) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split() == ["variant", "key", "expected", "tolerance", "actual", "ok"]
    assert lines[1].split() == ["baseline", "AP", "30.50", "0.50", "30.00", "ok"]
    assert len(lines) == 4 and "DRIFT" not in out.out and out.err == ""


def test_drift_exits_1_naming_each_number(project, capsys):
    expected = write_expected(project, {
        "baseline": {"AP": {"expected": 30.0, "tolerance": 0.5}},
        "pep": {"AP": {"expected": 36.0, "tolerance": 1.0}, "AP50": {"expected": 50.0, "tolerance": 2.0}}})
    assert run(project, expected) == 1
    out = capsys.readouterr()
    assert ["pep", "AP", "36.00", "1.00", "34.20", "DRIFT"] in [line.split() for line in out.out.splitlines()]
    drifted = [line for line in out.err.splitlines() if line.startswith("pep: drifted:")]
    assert drifted == ["pep: drifted: pep AP = 34.20, expected 36.00 ± 1.00 (off by -1.80)",
                       "pep: drifted: pep AP50 = 54.20, expected 50.00 ± 2.00 (off by +4.20)"]


def test_missing_metrics_file_is_a_clear_error(project, capsys):
    expected = write_expected(project, {"excavate": {"AP": {"expected": 31.0, "tolerance": 1.0}}})
    assert run(project, expected) == 2
    err = capsys.readouterr().err
    assert "metrics/excavate/val.json: metrics file not found" in err
    assert "pep evaluate --variant excavate" in err and "Traceback" not in err


def test_missing_key_and_malformed_entries_are_named(project, default_params):
    cfg = {**default_params, "params_file": str(project / "params.yaml")}
    with pytest.raises(PepError, match=r"pep/val.json: 'AP75' is missing"):
        check_results(cfg, write_expected(project, {"pep": {"AP75": {"expected": 1.0, "tolerance": 1.0}}}))
    with pytest.raises(PepError, match=r"default.pep.AP: expected \{expected: <number>, tolerance"):
        check_results(cfg, write_expected(project, {"pep": {"AP": {"expected": 1.0}}}))
    with pytest.raises(PepError, match=r"default.pepp: unknown variant"):
        check_results(cfg, write_expected(project, {"pepp": {"AP": {"expected": 1.0, "tolerance": 1}}}))
    with pytest.raises(PepError, match=r"no expected values for profile 'default'"):
        check_results(cfg, write_expected(project, {"pep": {"AP": {"expected": 1.0, "tolerance": 1}}},
                                          profile="coco"))


def test_shipped_expected_file():
    """The coco profile carries the paper's Table 2; the default profile's values are measured by
    the demo's owner, and until they are there it says so instead of passing."""
    coco = read_expected(EXPECTED_FILE, "coco")
    assert coco["pep"]["AP"] == (40.6, 1.0) and set(coco) == {"baseline", "excavate", "purify", "pep"}
    try:
        default = read_expected(EXPECTED_FILE, "default")
    except PepError as exc:
        assert "no expected values for profile 'default'" in str(exc)
        assert "TODO(lead): measured values go here" in EXPECTED_FILE.read_text(encoding="utf-8")
    else:
        assert default and all(keys for keys in default.values())
