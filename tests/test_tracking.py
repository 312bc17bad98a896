"""MLflow tracking: one run per (variant, seed) across train, resume and evaluate, over HTTP and
on a sqlite file that several training processes write at once."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pep.config import PROJECT_ROOT, flatten, load_params
from pep.stage_settings import params_hash
from pep.tracking import runs, store
from pep.tracking.compare import COMPARE_COLUMNS, compare_runs, format_comparison
from pep.tracking.runs import Tracker
from pep.tracking.store import tracking_uri

MLFLOW = Path(sys.executable).parent / "mlflow"
METRICS = ("loss", "loss_mask", "lr", "images_per_s")


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch):
    """A tracking URI from the developer's shell must not redirect the tests."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def base_cfg() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture
def bare_cfg(base_cfg, tmp_path) -> dict:
    """The project's parameters with the store moved to a sqlite file not yet created."""
    cfg = copy.deepcopy(base_cfg)
    cfg["tracking"].update(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="pep-test")
    return cfg


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty sqlite store: building one takes MLflow seconds, copying it does not."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}")
    return path


@pytest.fixture
def cfg(bare_cfg, empty_store, tmp_path) -> dict:
    """`bare_cfg` with its (empty) store already in place."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return bare_cfg


def runs_of(client: MlflowClient, experiment: str, variant: str, seed: int) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id],
                              f"tags.variant = '{variant}' AND tags.seed = '{seed}'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback (one worker: it starts in half the time of four)."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    stderr_path = tmp / "server.err"
    with open(tmp / "server.out", "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
             "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=tmp, stdout=out, stderr=err, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with {proc.returncode}" if proc.poll() is not None
                   else "did not answer /health within 60 s")
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server {why}; its stderr:\n"
                        + stderr_path.read_text(errors="replace")[-4000:])
        time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_train_then_evaluate_share_one_run_on_a_server(cfg, mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg["tracking"]["experiment"] = "pep-http"
    cfg["data"]["synth"]["classes"] = ["shape" * 20] * 100  # 10 kB: past MLflow's param limit
    with Tracker(cfg, "pep", 0).start("train") as t:
        for step in range(0, 100, 20):
            t.log_metrics({"loss": 2.0 - step / 100, "lr": 0.002, "images_per_s": 30.0}, step=step)
        t.log_dict(cfg, "config.json")
        t.log_metrics({"train_time_s": 12.5})
        train_run = t.run_id
    metrics_file = tmp_path / "val.json"
    metrics_file.write_text(json.dumps({"AP": 31.2, "AP50": 52.0}))
    with Tracker(cfg, "pep", 0).start("evaluate") as t:
        assert t.run_id == train_run
        t.log_metrics({"AP": 31.2, "AP50": 52.0})
        t.log_artifact(metrics_file, "metrics")

    client = MlflowClient(mlflow_server)
    (run,) = runs_of(client, "pep-http", "pep", 0)
    assert run.info.run_id == train_run and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["dataset"] == "synth:default" and tags["params_hash"] == params_hash(cfg, "pep")
    assert tags["stage_train"] == tags["stage_evaluate"] == "done"
    assert tags["git_commit"] and "orphan_evaluation" not in tags
    params = run.data.params
    assert len(params) == len(flatten(cfg))
    assert params["train.lr"] == "0.002" and params["model.levels.grids"] == "[24, 16, 8]"
    assert params["variants.pep.dedup"] == "purify_merge"
    long_param = params["data.synth.classes"]
    assert len(long_param) == 6000 and long_param.endswith("...[truncated]")
    assert [m.step for m in client.get_metric_history(train_run, "loss")] == [0, 20, 40, 60, 80]
    assert run.data.metrics["AP"] == 31.2 and run.data.metrics["train_time_s"] == 12.5
    assert {a.path for a in client.list_artifacts(train_run)} == {"config.json", "metrics"}
    assert [a.path for a in client.list_artifacts(train_run, "metrics")] == ["metrics/val.json"]


def test_a_crashed_training_resumes_its_run_and_a_retrain_starts_a_new_one(cfg):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(cfg, "baseline", 0).start("train") as t:
            t.log_metrics({"loss": 1.0}, step=0)
            crashed = t.run_id
            raise RuntimeError("boom")
    client = MlflowClient(tracking_uri(cfg))
    assert client.get_run(crashed).info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt):
        with Tracker(cfg, "baseline", 0).start("train") as t:
            assert t.run_id == crashed
            raise KeyboardInterrupt
    assert client.get_run(crashed).info.status == "KILLED"

    Tracker(cfg, "baseline", 0).start("train")  # killed hard: never ended, left RUNNING
    assert client.get_run(crashed).info.status == "RUNNING"
    with Tracker(cfg, "baseline", 0).start("train") as t:
        assert t.run_id == crashed
        t.log_metrics({"loss": 0.5}, step=1)
    run = client.get_run(crashed)
    assert run.info.status == "FINISHED" and run.data.tags["stage_train"] == "done"
    assert [m.step for m in client.get_metric_history(crashed, "loss")] == [0, 1]

    with Tracker(cfg, "baseline", 0).start("train") as t:  # a forced retrain
        retrained = t.run_id
    assert retrained != crashed
    with Tracker(cfg, "baseline", 0).start("evaluate") as t:
        assert t.run_id == retrained  # the newest finished training
    with Tracker(cfg, "baseline", 1).start("train") as t:
        assert t.run_id not in (crashed, retrained)
    changed = copy.deepcopy(cfg)
    changed["train"]["lr"] = 0.01
    with Tracker(changed, "baseline", 0).start("evaluate") as t:
        assert t.run_id not in (crashed, retrained)  # another params_hash: not that model
    assert len(runs_of(client, "pep-test", "baseline", 0)) == 3


def test_evaluation_without_training_is_an_orphan_run(cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="pep.tracking.runs"):
        with Tracker(cfg, "purify", 3).start("evaluate") as t:
            t.log_metrics({"AP": 1.0})
            orphan = t.run_id
    assert "orphan_evaluation" in caplog.text
    client = MlflowClient(tracking_uri(cfg))
    assert client.get_run(orphan).data.tags["orphan_evaluation"] == "true"
    with Tracker(cfg, "purify", 3).start("train") as t:
        assert t.run_id != orphan  # an evaluation is never resumed as a training


CONCURRENT_WORKER = """
import json, sys, time
from pathlib import Path
from pep.tracking import runs, store
cfg, variant, seed, start_file, ready_file = json.loads(sys.argv[1])
Path(ready_file).touch()
while not Path(start_file).exists():
    time.sleep(0.01)
with runs.Tracker(cfg, variant, seed).start("train") as t:
    for step in range(30):
        t.log_metrics({m: step / 10 for m in %r}, step=step)
print(json.dumps({"run_id": t.run_id, "retries": store.lock_retries()}))
""" % (METRICS,)


def test_four_processes_write_one_sqlite_store_without_losing_anything(bare_cfg, tmp_path):
    """Fresh store, four trainings started in the same instant: every param and step lands."""
    start_file = tmp_path / "go"
    jobs = []
    for i, variant in enumerate(("baseline", "excavate", "purify", "pep")):
        ready = tmp_path / f"ready{i}"
        args = json.dumps([bare_cfg, variant, i, str(start_file), str(ready)])
        jobs.append((variant, i, ready, subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WORKER, args], cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for _, _, ready, _ in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    start_file.touch()
    results = {}
    for variant, seed, _, proc in jobs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{variant} worker failed:\n{err[-3000:]}"
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"sqlite 'database is locked' retries per worker: "
          f"{ {v: r['retries'] for v, r in results.items()} }")

    client = MlflowClient(tracking_uri(bare_cfg))
    expected_params = {key: str(value) for key, value in flatten(bare_cfg).items()}
    for seed, (variant, result) in enumerate(results.items()):
        (run,) = runs_of(client, "pep-test", variant, seed)
        assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
        assert run.data.params == expected_params
        for metric in METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            assert sorted(steps) == list(range(30)), f"{variant}.{metric}"


def test_retrying_outlasts_a_locked_store_and_nothing_else(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    before = store.lock_retries()
    assert store.retrying(flaky) == "ok" and store.lock_retries() == before + 2

    def broken():
        calls.append(1)
        raise MlflowException("no such table: runs")

    calls.clear()
    with pytest.raises(MlflowException, match="no such table"):
        store.retrying(broken)
    assert len(calls) == 1


def test_a_store_locked_past_sqlites_busy_timeout_loses_nothing(cfg, tmp_path):
    """MLflow waits 20 s (its PRAGMA busy_timeout) before it says "database is locked"; the lock
    here is held until that happened once, then released for the retry to go through."""
    tracker = Tracker(cfg, "excavate", 0).start("train")
    before = store.lock_retries()
    blocker = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None,
                              check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")

    def release_after_first_retry() -> None:
        deadline = time.monotonic() + 60
        while store.lock_retries() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        blocker.execute("ROLLBACK")

    releaser = threading.Thread(target=release_after_first_retry)
    releaser.start()
    try:
        tracker.log_metrics({"loss": 0.25}, step=7)
    finally:
        releaser.join()
        blocker.close()
    tracker.end()
    assert store.lock_retries() > before
    history = MlflowClient(tracking_uri(cfg)).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.25)]


def test_compare_runs_lists_variants_in_the_papers_order(cfg):
    for variant, seed, ap in (("pep", 1, 33.0), ("baseline", 0, 28.0), ("pep", 0, 32.5),
                              ("purify", 0, 30.0), ("excavate", 0, 29.5)):
        with Tracker(cfg, variant, seed).start("train") as t:
            t.log_metrics({"train_time_s": 60.0})
        with Tracker(cfg, variant, seed).start("evaluate") as t:
            t.log_metrics({"AP": ap, "AP50": ap + 20, "AP75": ap - 2, "APs": 10.0, "APm": ap,
                           "APl": ap + 5})
    df = compare_runs(cfg)
    assert tuple(df.columns) == COMPARE_COLUMNS
    assert list(zip(df["variant"], df["seed"])) == [("baseline", 0), ("excavate", 0),
                                                    ("purify", 0), ("pep", 0), ("pep", 1)]
    assert list(df["AP"]) == [28.0, 29.5, 30.0, 32.5, 33.0]
    assert set(df["status"]) == {"FINISHED"} and set(df["train_time_s"]) == {60.0}
    table = format_comparison(df)
    assert table.splitlines()[0].split()[:3] == ["variant", "seed", "AP"]
    assert "32.5" in table and len(table.splitlines()) == 6


def test_compare_runs_on_an_empty_store_says_so_without_creating_it(bare_cfg, empty_store,
                                                                   tmp_path):
    df = compare_runs(bare_cfg)
    assert df.empty and tuple(df.columns) == COMPARE_COLUMNS
    assert format_comparison(df) == (f"no runs in experiment 'pep-test' at "
                                     f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")  # a store, but without our experiment
    assert compare_runs(bare_cfg).empty


def test_tracking_uri_env_wins_and_relative_sqlite_follows_the_params_file(cfg, tmp_path,
                                                                          monkeypatch):
    cfg["params_file"] = str(tmp_path / "project" / "params.yaml")
    cfg["tracking"]["tracking_uri"] = "sqlite:///mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path}/project/mlflow.db"
    cfg["tracking"]["tracking_uri"] = "sqlite:///runs/../store.db"
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path}/project/store.db"
    for fixed in (f"sqlite:///{tmp_path}/abs.db", "http://127.0.0.1:5000"):
        cfg["tracking"]["tracking_uri"] = fixed
        assert tracking_uri(cfg) == fixed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(cfg) == "http://127.0.0.1:5999"


def test_params_hash_follows_what_shapes_the_model(cfg):
    moved = copy.deepcopy(cfg)
    moved["params_file"] = "/elsewhere/params.yaml"
    assert params_hash(cfg) == params_hash(moved)
    assert len(params_hash(cfg)) == 12 and int(params_hash(cfg), 16) >= 0
    moved["evaluate"]["batch_size"] = 1  # evaluation settings do not make another model
    moved["train"]["seeds"] = [0, 1, 2]
    assert params_hash(cfg) == params_hash(moved)
    moved["model"]["head"]["convs"] = 4
    assert params_hash(cfg) != params_hash(moved)


def test_git_commit_is_unknown_without_git(monkeypatch):
    runs.git_commit.cache_clear()
    monkeypatch.setenv("PATH", "")
    try:
        assert runs.git_commit() == "unknown"
    finally:
        runs.git_commit.cache_clear()


def test_a_disabled_tracker_does_nothing(bare_cfg, tmp_path):
    with Tracker(bare_cfg, "pep", 0, enabled=False).start("train") as t:
        t.log_metrics({"loss": 1.0}, step=0)
        t.log_dict({"a": 1}, "config.json")
        t.log_artifact(tmp_path, "folder")
        t.set_tags({"x": "y"})
    assert t.run_id is None
    assert not (tmp_path / "mlflow.db").exists()
