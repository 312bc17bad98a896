"""The two-command set-up: pins agree across files, and `dvc repro` runs the pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_ci_calls_make_test():
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_dvc_stages_only_call_pep():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        assert cmd.split()[0] == "pep", f"stage {name} runs {cmd!r}: stages must call `pep` only"


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_then_has_nothing_to_do(tmp_path):
    """`make demo` is `dvc repro`: run it in a copy of the project (smaller data set)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.split("\0")
    work = tmp_path / "project"
    for rel in filter(None, tracked):
        if (PROJECT_ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / rel, work / rel)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["synth"].update(num_train=12, num_val=4, num_test_dev=4)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)

    def dvc(*args):
        proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=work, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    dvc("repro")
    assert len(list((work / "data/synth/train2017").iterdir())) == 12
    report = json.loads((work / "reports/data/validate_train.json").read_text())
    assert report["trainable"] is True
    second = dvc("repro")
    assert "didn't change, skipping" in second and "Running stage" not in second
    assert "up to date" in dvc("status").lower() or dvc("status").strip() == ""
