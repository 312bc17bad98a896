"""The MLflow store: where it is, how it is opened, and calls to it that survive a busy sqlite file.

Several training processes may write one sqlite file at once; SQLite then answers some of them
"database is locked" straight away (it does so without waiting when two transactions would
deadlock), so every MLflow call goes through `retrying`, which tries again with backoff.

MLflow is imported lazily: it takes seconds, and most `pep` commands never track anything.
"""

from __future__ import annotations

import logging
import os
import random
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from pep.config import PROJECT_ROOT

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

TRUNCATED = "...[truncated]"
LOCKED = "database is locked"
RETRY_BUDGET_S = 30.0
# Artifacts live beside a sqlite store, at a path relative to its folder (pep.tracking.artifacts).
SCHEME = "pep-artifacts"
FOLDER = "mlartifacts"  # beside the sqlite file
EXPERIMENT_LOCATION = f"{SCHEME}:{FOLDER}"  # a new experiment's; MLflow appends the runs' folders

_lock_retries = 0
_initialized_stores: set[str] = set()


def lock_retries() -> int:
    """How many MLflow calls this process retried because sqlite was locked (for reports, tests)."""
    return _lock_retries


def tracking_uri(cfg: dict) -> str:
    """MLFLOW_TRACKING_URI from the environment wins; else cfg["tracking"]["tracking_uri"].

    A relative sqlite path (sqlite:///mlflow.db) is resolved against the folder of
    cfg["params_file"] (the project root), so runs land in one store whatever the cwd.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = cfg["tracking"]["tracking_uri"]
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, sep, query = uri[len(prefix):].partition("?")
    if not path or path == ":memory:" or Path(path).is_absolute():
        return uri
    base = Path(cfg.get("params_file", PROJECT_ROOT / "params.yaml")).parent
    return f"{prefix}{os.path.abspath(base / path)}{sep}{query}"


def truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - len(TRUNCATED)] + TRUNCATED


class _DropLockedErrors(logging.Filter):
    """MLflow logs every sqlite OperationalError with a traceback; the locked ones are retried."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LOCKED not in record.getMessage()


@lru_cache(maxsize=1)
def quiet_mlflow() -> None:
    # MLflow writes "View run ... at" links straight to stdout when a run on a server ends.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars in every stage log
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").addFilter(_DropLockedErrors())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def retrying(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), tried again with backoff while it fails with "database is locked"."""
    global _lock_retries
    deadline = time.monotonic() + RETRY_BUDGET_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if LOCKED not in str(exc) or time.monotonic() + delay > deadline:
                raise
        _lock_retries += 1
        log.debug("%s: sqlite store locked, retrying in %.2f s", fn.__name__, delay)
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for other stores and in-memory ones."""
    path = uri.removeprefix("sqlite:///").partition("?")[0] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def _store_init_lock(uri: str) -> Iterator[None]:
    """Serialize the first touch of a sqlite store between processes of this machine.

    MLflow's SqlAlchemyStore creates and migrates the tables of a fresh database without a lock
    of its own, so several processes starting together on a new file trip over each other.
    """
    db = sqlite_file(uri)
    if db is None or uri in _initialized_stores:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)  # MLflow would, too; the lock is on the folder
    folder = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
        _initialized_stores.add(uri)
    finally:
        os.close(folder)  # releases the lock


def open_client(uri: str) -> "MlflowClient":
    """A client whose store exists and is migrated (MLflow builds it with the client)."""
    from mlflow import MlflowClient

    quiet_mlflow()
    with _store_init_lock(uri):
        return retrying(MlflowClient, tracking_uri=uri)


def find_experiment(client: "MlflowClient", name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a sqlite file) when it is missing."""
    from mlflow.exceptions import MlflowException

    experiment = retrying(client.get_experiment_by_name, name)
    if experiment is None:
        # relative to the store's folder (pep.tracking.artifacts): a moved project keeps working
        location = EXPERIMENT_LOCATION if sqlite_file(uri) else None
        try:
            return retrying(client.create_experiment, name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = retrying(client.get_experiment_by_name, name)  # another process won
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment '%s' was deleted; restoring it", name)
        retrying(client.restore_experiment, experiment.experiment_id)
    return experiment.experiment_id
