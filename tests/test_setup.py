"""The two-command set-up: pins agree across files, and `dvc repro` runs the pipeline."""

from __future__ import annotations

import re

import pytest
import yaml

from pep.config import PROJECT_ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)")


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = PIN.match(line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_requirements_environment_and_lock_agree():
    direct = pins((PROJECT_ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == direct
    assert "python=3.11" in env["dependencies"]
    locked = pins((PROJECT_ROOT / "requirements.lock").read_text().splitlines())
    for name, version in direct.items():
        assert locked.get(name) == version, f"{name}: requirements.txt {version}, lock {locked.get(name)}"


def test_make_test_keeps_a_file_on_one_worker(request):
    """Under make test's `--dist loadgroup`, this test carries its file's group: a file's
    module fixtures are then built once, not once per worker (they were not, silently, with
    pytest 9.2 and xdist 3.8, whose groups live in the node id)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by make test (pytest -n N --dist loadgroup)")
    assert request.node.nodeid.endswith("@test_setup"), request.node.nodeid


def test_ci_calls_make_test():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_dvc_stages_only_call_pep():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.split()[0] == "pep", f"stage {name} runs {cmd!r}: stages must call `pep` only"

