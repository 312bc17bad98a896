"""Shared fixtures: the project's paths, ../shared, and a small synthetic data set."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from pep.config import PROJECT_ROOT, load_params

SHARED = Path(os.environ.get("PEP_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
TINY_COCO = SHARED / "data" / "tiny_coco"
FAKE100 = SHARED / "data" / "cocoapi_fake100"


def pytest_configure(config):
    if not TINY_COCO.is_dir():
        raise pytest.UsageError(f"test data not found at {TINY_COCO}: clone the project beside "
                                "`shared/` or set PEP_SHARED")


@pytest.fixture(scope="session")
def default_params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml", profile="default")


@pytest.fixture(scope="session")
def small_synth_cfg(default_params) -> dict:
    """The default generator settings at a size that builds in about a second."""
    cfg = copy.deepcopy(default_params["data"]["synth"])
    cfg.update(num_train=24, num_val=8, num_test_dev=6)
    return cfg


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory, small_synth_cfg) -> Path:
    from pep.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "synth"
    generate(small_synth_cfg, root, progress=False)
    return root
