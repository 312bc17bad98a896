"""The tiny pipeline that the workflow tests run: a project copy at a few dozen images, the
commands that run in it, and `dvc_project`, that pipeline built once by `dvc repro` for the
whole test run.

`dvc_project` is built once per `pytest` run, not once per xdist worker: the first worker to
start a test claims the build (a file created with O_EXCL in the run's shared temporary
folder) and runs it in a background thread while both workers go on with other tests; a test
that asks for the project waits for it there and gets its own copy (`copy_built`), so tests
may change it freely and run on either worker. Built by each worker it cost 130 to 140 s twice.

tests/conftest.py registers it (`pytest_plugins`; tests/ is on sys.path). PYTEST_DONT_REWRITE: it
has no asserts to rewrite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from pep.config import PROJECT_ROOT

BIN = PROJECT_ROOT / ".venv" / "bin"
# What the project copy needs: the package (dvc.yaml names its files as dependencies), the two
# workflow descriptions and the parameters.
PROJECT_FILES = ("pep", "workflow", "dvc.yaml", "Snakefile", ".dvcignore", "environment.yml",
                 "reports/test-dev-server")
BUILD_TIMEOUT_S = 1500  # the build's own limit; a waiting test gives up after it, too


def env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "MPLBACKEND": "Agg", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(*cmd, cwd, timeout=900, check=True, threads: int | None = None) -> subprocess.CompletedProcess:
    """A command in the project; `threads` pins torch's thread count (OMP_NUM_THREADS)."""
    extra = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**env(), **extra}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def tiny_params(**overrides) -> dict:
    """The default profile at a size that runs end to end in about a minute per tool."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["synth"].update(num_train=16, num_val=6, num_test_dev=4)
    params["data"]["num_workers"] = 0
    params["train"].update(epochs=1, batch_size=4, warmup_iters=2, log_every_iters=1, checkpoint_every_iters=2)
    params["evaluate"]["bootstrap"]["resamples"] = 20
    for job in ("train", "evaluate"):
        params["cluster"][job].update(cpus=1, mem_mb=1000, runtime_min=10)
    params.update(overrides)
    return params


def copy_project(dest: Path, overrides: dict | None = None) -> Path:
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(**(overrides or {})), sort_keys=False))
    (dest / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/.snakemake/\n/logs/\n/.pep/\n__pycache__/\n")
    sh("git", "init", "-q", cwd=dest)
    sh(BIN / "dvc", "init", "-q", cwd=dest)
    sh(BIN / "dvc", "config", "core.analytics", "false", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "project", cwd=dest)
    return dest


def copy_built(src: Path, dest: Path) -> Path:
    """A copy of a built project whose weights files are hard links: 40 MB instead of 545, and
    nine tests take a copy. Nothing writes them in place (checkpoints are replaced by a rename,
    pep.engine.checkpoint.save_atomic; MLflow and DVC's cache add new files), so no copy can
    change another's. Times are kept: Snakemake compares them."""
    cache = f"{os.sep}.dvc{os.sep}cache{os.sep}"

    def link_weights(source: str, target: str) -> None:
        if source.endswith(".pt") or cache in source:
            os.link(source, target)
        else:
            shutil.copy2(source, target)

    shutil.copytree(src, dest, symlinks=True, copy_function=link_weights)
    return dest


# -- the project built once per test run ---------------------------------------------------------

class SharedBuild:
    """Files in the run's shared temporary folder: `dvc_project/` (the project), `.log` (what
    `dvc repro` printed), `.status` (written last: `ok <seconds>` or `failed: <why>`)."""

    def __init__(self, root: Path):
        self.project = root / "dvc_project"
        self.log = root / "dvc_project.log"
        self.status = root / "dvc_project.status"
        self.claim = root / "dvc_project.claim"
        self.process: subprocess.Popen | None = None

    def claim_it(self) -> bool:
        """True for the one process of the run that builds."""
        try:
            os.close(os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def build(self) -> None:
        started = time.monotonic()
        try:
            copy_project(self.project)
            with open(self.log, "w") as log:
                # with as many threads as Snakemake gives each job (its `threads`, the cluster
                # CPUs of tiny_params): float sums, and so the trained models, depend on it
                self.process = subprocess.Popen(
                    [str(BIN / "dvc"), "repro"], cwd=self.project, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**env(), "OMP_NUM_THREADS": str(tiny_params()["cluster"]["train"]["cpus"])})
                code = self.process.wait(timeout=BUILD_TIMEOUT_S)
            result = f"ok {time.monotonic() - started:.0f}" if code == 0 else f"failed: dvc repro exited {code}"
        except Exception as exc:  # reported to every test that waits for the project
            result = f"failed: {type(exc).__name__}: {exc}"
        partial = self.status.with_suffix(".partial")
        partial.write_text(result)
        partial.rename(self.status)  # a waiting reader sees all of it or nothing

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self) -> str:
        deadline = time.monotonic() + BUILD_TIMEOUT_S + 120
        while not self.status.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"the shared dvc repro project was not built within {BUILD_TIMEOUT_S} s "
                            f"(its log: {self.log})", pytrace=False)
            time.sleep(1)
        result = self.status.read_text()
        if not result.startswith("ok"):
            tail = self.log.read_text()[-4000:] if self.log.exists() else ""
            pytest.fail(f"the shared dvc repro project failed to build: {result}\n{tail}", pytrace=False)
        return result


def _shared_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: popen-gwN's parent


@pytest.fixture(scope="session", autouse=True)
def dvc_project_build(request, tmp_path_factory) -> SharedBuild:
    """Starts the build at each process's first test when any test of the run needs it. Autouse
    reaches every test only because tests/conftest.py registers this plugin before collection:
    registered by a test module, it reached only the tests collected after that module."""
    build = SharedBuild(_shared_root(tmp_path_factory))
    needed = any("dvc_project" in getattr(item, "fixturenames", ()) for item in request.session.items)
    thread = None
    if needed and build.claim_it():
        thread = threading.Thread(target=build.build, name="dvc_project build", daemon=True)
        thread.start()
    yield build
    if thread is not None and thread.is_alive():
        if request.session.shouldfail or request.session.shouldstop:  # -x and the like: no orphan
            build.stop()
        thread.join()  # else another process may still be waiting for the project


@pytest.fixture
def dvc_project(dvc_project_build, tmp_path) -> Path:
    """Its own copy of the tiny pipeline that `dvc repro` ran once, as `make demo` does."""
    dvc_project_build.wait()
    return copy_built(dvc_project_build.project, tmp_path / "built")
