"""Shared fixtures: the project's paths, ../shared, and a small synthetic data set."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from pep.config import PROJECT_ROOT, load_params

pytest_plugins = ["tiny_pipeline"]  # the `dvc repro` project built once per run (dvc_project)

SHARED = Path(os.environ.get("PEP_SHARED", PROJECT_ROOT.parent / "shared")).resolve()
TINY_COCO = SHARED / "data" / "tiny_coco"
FAKE100 = SHARED / "data" / "cocoapi_fake100"

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
       "MLFLOW_TRACKING_URI": ""}

BOUND_S = 60  # no refused command may run longer than this


def pep(*args: str, cwd: Path, env: dict | None = None, timeout: float = BOUND_S,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, str(BIN / "pep"), *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def refused(*args: str, cwd: Path, names: tuple[str, ...], env: dict | None = None,
            prefix: tuple[str, ...] = ()) -> str:
    """Run a command that must fail as a user should see it fail; its stderr."""
    started = time.monotonic()
    proc = pep(*args, cwd=cwd, env=env, prefix=prefix)
    seconds = time.monotonic() - started
    shown = f"$ pep {' '.join(args)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode not in (0, None), shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pep: error:")]
    assert len(errors) == 1, shown  # one message (it may go on over indented lines)
    message = proc.stderr[proc.stderr.index("pep: error:"):]
    for name in names:
        assert name in message, f"{name!r} not in the message\n{shown}"
    assert seconds < BOUND_S
    return proc.stderr


def write(path: Path, data) -> Path:
    """`data` as a JSON file at `path` (folders made); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def perfect_results(dataset: dict, image_ids: set[int] | None = None, score: float = 1.0) -> list[dict]:
    """Every non-crowd ground-truth mask of `dataset` (a parsed annotation file, on the images
    `image_ids` or all) as a detection: AP must be 1. Nothing but those masks is decoded, so a
    file with a broken record elsewhere still gives its good ones."""
    index = COCO()
    index.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' chatter
        index.createIndex()
    records = []
    for ann in dataset["annotations"]:
        if ann["iscrowd"] or (image_ids is not None and ann["image_id"] not in image_ids):
            continue
        rle = index.annToRLE(ann)
        records.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": score,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return records


def make_project(folder: Path, synth_root: Path, **train) -> Path:
    """A project folder with its own params.yaml (outputs land beside it) on the small set."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"].update(root=str(synth_root), num_workers=0)
    raw["data"]["input"].update(train_min_size=[96], test_min_size=96, max_size=128)
    raw["train"].update({"batch_size": 4, "epochs": 4, "checkpoint_every_iters": 4, "log_every_iters": 2,
                         "warmup_iters": 4, **train})
    # caps that never bind: their random subsets would differ between process layouts
    raw["model"]["perceive"]["train_positives_per_image"] = 10_000
    raw["model"]["excavate"]["max_mined_per_image"] = 10_000
    raw["tracking"]["tracking_uri"] = "sqlite:///mlflow.db"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "params.yaml"


def pytest_configure(config):
    if not TINY_COCO.is_dir():
        raise pytest.UsageError(f"test data not found at {TINY_COCO}: clone the project beside "
                                "`shared/` or set PEP_SHARED")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One thread per worker, in this process and in the commands it starts: two workers with
        # torch's default of one thread per core oversubscribe the cores, and in-process training
        # then ran 10 to 50 times slower (OpenMP threads spinning against each other).
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


# Under `pytest -n N --dist loadgroup` (make test), a file's tests run on one worker, so that its
# module fixtures are built once; test_workflow.py's end-to-end runs spread over the workers (the
# `dvc repro` project they share is built once for the whole run: tests/tiny_pipeline.py).
SPREAD_FILES = {"test_workflow.py"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    # A wrapper's code before `yield` runs before every plain implementation, xdist's among
    # them, which reads the groups. Where no group holds (pytest 9.2 with xdist 3.8), each
    # worker builds a file's module fixtures again: test_setup.py checks that one does.
    for item in items:
        if item.path.name not in SPREAD_FILES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    return (yield)


@pytest.fixture(autouse=True)
def _fresh_mlflow_stores():
    """MLflow keeps, for the life of the process, one store per tracking URI (an lru_cache) and
    one SQLAlchemy engine per database URI, whose pooled sqlite connections stay open. A passing
    test's tmp_path is deleted (tmp_path_retention_policy) and the next test of the same name
    prefix gets the same path: its reads in this process then went to the deleted database of
    the test before (SIGTERM's stop test saw SIGUSR1's finished run once both ran on one
    worker). Each test starts without either cache."""
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        with store.SqlAlchemyStore._engine_map_lock:
            for engine in store.SqlAlchemyStore._engine_map.values():
                engine.dispose()
            store.SqlAlchemyStore._engine_map.clear()


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


@pytest.fixture(scope="session")
def small_synth_without_nests(tmp_path_factory, small_synth_cfg) -> Path:
    """The same at crowding level `none`: every instance owns a grid cell, so that any model
    can fit every instance (the shipped level's nests hide some from perceiving by design)."""
    from pep.data.synth import generate

    root = tmp_path_factory.mktemp("synth_none") / "synth"
    generate({**small_synth_cfg, "crowding": "none"}, root, progress=False)
    return root
