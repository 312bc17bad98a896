"""MLflow tracking: one run per (variant, seed) that training, resumption and evaluation share.

Runs are found again by their tags (`variant`, `seed`, `dataset`, `params_hash`), so that a
resumed training continues its crashed run and evaluation adds its metrics to the run of the
model it evaluates instead of starting a stray one.

Several training processes may write one sqlite file at once; SQLite then answers some of them
"database is locked" straight away (it does so without waiting when two transactions would
deadlock), so every MLflow call goes through `_retrying`, which tries again with backoff.

MLflow is imported lazily: it takes seconds, and most `pep` commands never track anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from pep.config import PROJECT_ROOT, VARIANTS, flatten, resolve_data_path
from pep.stage_settings import train_settings

if TYPE_CHECKING:
    import pandas
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = ("train", "evaluate")
METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COMPARE_COLUMNS = ("variant", "seed", *METRIC_COLUMNS, "train_time_s", "status", "run_id")
# MLflow 3's limits (mlflow.utils.validation); a longer value is rejected, not cut.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
TRUNCATED = "...[truncated]"
LOCKED = "database is locked"
RETRY_BUDGET_S = 30.0

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


def params_hash(cfg: dict, variant: str | None = None) -> str:
    """12 hex chars that change when a parameter that shapes the trained model does (a
    variant's training settings, pep.stage_settings, without the seed); without a variant, any
    variant's. Editing one variant leaves the others' runs (and checkpoints) valid; adding a
    seed or changing an inference rule leaves every run valid."""
    effective = train_settings(cfg, variant) if variant is not None else \
        {name: train_settings(cfg, name) for name in VARIANTS}
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def dataset_tag(cfg: dict) -> str:
    """`source:folder`, e.g. "synth:synth": tells apart runs on different data roots."""
    root = Path(os.path.abspath(resolve_data_path(cfg, "root")))
    return f"{cfg['data']['source']}:{root.name}"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the project, "-dirty" when tracked files changed; "unknown" without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - len(TRUNCATED)] + TRUNCATED


class _DropLockedErrors(logging.Filter):
    """MLflow logs every sqlite OperationalError with a traceback; the locked ones are retried."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LOCKED not in record.getMessage()


@lru_cache(maxsize=1)
def _quiet_mlflow() -> None:
    # MLflow writes "View run ... at" links straight to stdout when a run on a server ends.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars in every stage log
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").addFilter(_DropLockedErrors())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _retrying(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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


def _client(uri: str) -> "MlflowClient":
    """A client whose store exists and is migrated (MLflow builds it with the client)."""
    from mlflow import MlflowClient

    _quiet_mlflow()
    with _store_init_lock(uri):
        return _retrying(MlflowClient, tracking_uri=uri)


def _experiment_id(client: "MlflowClient", name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a sqlite file) when it is missing."""
    from mlflow.exceptions import MlflowException

    from pep.mlflow_artifacts import EXPERIMENT_LOCATION

    experiment = _retrying(client.get_experiment_by_name, name)
    if experiment is None:
        # relative to the store's folder (pep.mlflow_artifacts): a moved project keeps working
        location = EXPERIMENT_LOCATION if sqlite_file(uri) else None
        try:
            return _retrying(client.create_experiment, name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = _retrying(client.get_experiment_by_name, name)  # another process won
    if experiment.lifecycle_stage == "deleted":
        log.warning("MLflow experiment '%s' was deleted; restoring it", name)
        _retrying(client.restore_experiment, experiment.experiment_id)
    return experiment.experiment_id


class Tracker:
    """The MLflow run of one (variant, seed) for one stage; every method is safe to call often.

    enabled=False (non-zero ranks of a distributed job) makes every method a no-op.
    """

    def __init__(self, cfg: dict, variant: str, seed: int, enabled: bool = True):
        self.cfg = cfg
        self.variant = variant
        self.seed = seed
        self.enabled = enabled
        self.stage: str | None = None
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._ended = False
        self._monitor = None  # MLflow's system metrics sampler, during training

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def identity_tags(self) -> dict[str, str]:
        """The tags that find this run again."""
        return {"variant": self.variant, "seed": str(self.seed), "dataset": dataset_tag(self.cfg),
                "params_hash": params_hash(self.cfg, self.variant)}

    def start(self, stage: str) -> "Tracker":
        """Open the run for `stage` ("train" or "evaluate"): resumed, joined or new (see module);
        training also samples system metrics (CPU, memory, GPU where there is one) into it."""
        self._open(stage)
        interval = self.cfg["tracking"].get("system_metrics_interval_s", 0)
        if self.enabled and stage == "train" and interval:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self._run_id, sampling_interval=interval,
                                                 samples_before_logging=1,
                                                 tracking_uri=tracking_uri(self.cfg))
            self._monitor.start()
        return self

    def _open(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if not self.enabled:
            return
        if self._run_id is not None:
            raise RuntimeError(f"tracker already started (run {self._run_id})")
        self.stage = stage
        uri = tracking_uri(self.cfg)
        self._client = _client(uri)
        experiment_id = _experiment_id(self._client, self.cfg["tracking"]["experiment"], uri)
        identity = self.identity_tags()
        query = " AND ".join(f"tags.{key} = '{value}'" for key, value in identity.items())
        runs = _retrying(self._client.search_runs, [experiment_id], query,
                         order_by=["attributes.start_time DESC"], max_results=1000)
        if stage == "train":
            unfinished = [r for r in runs if r.data.tags.get("stage_train", "done") != "done"
                          and r.info.status != "FINISHED"]
            run = unfinished[0] if unfinished else None
        else:
            trained = [r for r in runs if r.data.tags.get("stage_train") == "done"]
            run = trained[0] if trained else None
        extra = {f"stage_{stage}": "running", f"git_commit_{stage}": git_commit()}
        if run is not None:
            self._run_id = run.info.run_id
            log.info("MLflow: %s %s/seed %s continues run %s", stage, self.variant, self.seed,
                     self._run_id)
            _retrying(self._client.update_run, self._run_id, status="RUNNING")
            self.set_tags(extra)
            if stage == "train":
                self.log_params(flatten(self.cfg))  # completes a crash during the first attempt
            return
        tags = {**identity, "git_commit": git_commit(), **extra}
        if stage == "evaluate":
            log.warning("MLflow: no finished training run of %s/seed %s with params_hash %s in "
                        "experiment '%s'; logging the evaluation to a new run tagged "
                        "orphan_evaluation", self.variant, self.seed, identity["params_hash"],
                        self.cfg["tracking"]["experiment"])
            tags["orphan_evaluation"] = "true"
        run = _retrying(self._client.create_run, experiment_id,
                        tags={key: _truncate(value, MAX_TAG_LENGTH) for key, value in tags.items()},
                        run_name=f"{self.variant}-seed{self.seed}")
        self._run_id = run.info.run_id
        self.log_params(flatten(self.cfg))

    def _active(self) -> bool:
        if not self.enabled:
            return False
        if self._run_id is None:
            raise RuntimeError("Tracker.start() must be called before logging")
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        """Params as strings, cut with a marker at MLflow's length limit; re-logging is harmless."""
        if not self._active():
            return
        from mlflow.entities import Param

        # MLflow refuses to change a logged param; a resumed run may differ in settings outside
        # params_hash (a log interval, train.seeds): keep the first value, say so.
        logged = _retrying(self._client.get_run, self._run_id).data.params
        items = []
        for key, value in params.items():
            text = _truncate(value, MAX_PARAM_LENGTH)
            if key not in logged:
                items.append(Param(key, text))
            elif logged[key] != text:
                log.warning("MLflow: param %s stays %r in run %s (now %r)", key, logged[key],
                            self._run_id, text)
        for i in range(0, len(items), PARAMS_PER_BATCH):
            _retrying(self._client.log_batch, self._run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._active():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            _retrying(self._client.log_batch, self._run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a whole folder, under `artifact_path` of the run's artifacts."""
        if not self._active():
            return
        method = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
        _retrying(method, self._run_id, str(path), artifact_path)

    def log_dict(self, obj: dict, name: str) -> None:
        """`obj` as the artifact `name` (JSON or YAML by its extension), e.g. config.json."""
        if self._active():
            _retrying(self._client.log_dict, self._run_id, obj, name)

    def log_model(self, weights: str | os.PathLike, described: dict, register: bool = True) -> str | None:
        """The trained model as the MLflow model `model` of this run (pep.mlflow_model), with
        `pep` itself as its code, registered as `pep-<variant>` when `register`. Returns the URI
        that loads it: models:/pep-<variant>/<version>, or runs:/<run>/model."""
        if not self._active():
            return None
        import tempfile

        import mlflow
        import pandas as pd

        import pep
        from pep import mlflow_model

        name = f"pep-{self.variant}" if register else None
        with tempfile.TemporaryDirectory() as tmp:
            description = Path(tmp) / "pep_model.json"
            description.write_text(json.dumps(described, indent=2), encoding="utf-8")
            example = pd.DataFrame({"image": [mlflow_model.example_image_bytes()]})
            mlflow.set_tracking_uri(tracking_uri(self.cfg))
            # log_model needs the run active; leaving the block marks it finished, and end()
            # gives it the stage's own status afterwards
            with mlflow.start_run(run_id=self._run_id):
                info = _retrying(
                    mlflow.pyfunc.log_model, name="model", python_model=str(Path(pep.__file__).with_name("mlflow_entry.py")),
                    artifacts={mlflow_model.WEIGHTS: str(weights), mlflow_model.DESCRIPTION: str(description)},
                    code_paths=[str(Path(pep.__file__).parent)], signature=mlflow_model.signature(),
                    input_example=(example, mlflow_model.DEFAULT_PARAMS),
                    pip_requirements=mlflow_model.requirements(), registered_model_name=name,
                    tags=self.identity_tags())
            _retrying(self._client.update_run, self._run_id, status="RUNNING")
        if name is None:
            return f"runs:/{self._run_id}/model"
        version = info.registered_model_version
        for key, value in self.identity_tags().items():
            _retrying(self._client.set_model_version_tag, name, str(version), key, value)
        return f"models:/{name}/{version}"

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self._active():
            return
        from mlflow.entities import RunTag

        items = [RunTag(key, _truncate(value, MAX_TAG_LENGTH)) for key, value in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            _retrying(self._client.log_batch, self._run_id, tags=items[i:i + PARAMS_PER_BATCH])

    def end(self, status: str = "FINISHED") -> None:
        """Close the run; a finished train stage tags it stage_train=done for evaluation to join."""
        if not self.enabled or self._run_id is None or self._ended:
            return
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # a sampler that cannot write loses samples, not the stage
                log.warning("MLflow: system metrics of run %s not completed", self._run_id, exc_info=True)
            self._monitor = None
        outcome = {"FINISHED": "done", "FAILED": "failed", "KILLED": "killed"}[status]
        self.set_tags({f"stage_{self.stage}": outcome})
        _retrying(self._client.set_terminated, self._run_id, status)
        self._ended = True

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        # KILLED: interrupted (Ctrl-C) or stopped for the scheduler (pep.engine.preemption), to resume
        resumable = getattr(exc_type, "resumable", False) or not issubclass(exc_type, Exception)
        status = "KILLED" if resumable else "FAILED"
        try:
            self.end(status)
        except Exception:  # the stage's own exception is the one worth seeing
            log.exception("MLflow: could not mark run %s as %s", self._run_id, status)


def compare_runs(cfg: dict) -> "pandas.DataFrame":
    """The runs of the configured experiment side by side, in the paper's variant order.

    One row per run: variant, seed, AP, AP50, AP75, APs, APm, APl (percent), train_time_s,
    status, run_id. An empty frame with those columns when there are no runs; `attrs` carries
    the experiment and URI for `format_comparison`.
    """
    import pandas as pd

    uri = tracking_uri(cfg)
    name = cfg["tracking"]["experiment"]
    rows = []
    db = sqlite_file(uri)
    if db is None or db.exists():  # never create an empty store just to say it is empty
        client = _client(uri)
        experiment = _retrying(client.get_experiment_by_name, name)
        token = None
        while experiment is not None:
            page = _retrying(client.search_runs, [experiment.experiment_id], max_results=1000,
                             page_token=token)
            for run in page:
                tags, metrics = run.data.tags, run.data.metrics
                rows.append({"variant": tags.get("variant"), "seed": tags.get("seed"),
                             **{key: metrics.get(key) for key in (*METRIC_COLUMNS, "train_time_s")},
                             "status": run.info.status, "run_id": run.info.run_id,
                             "start_time": run.info.start_time})
            token = page.token
            if not token:
                break
    df = pd.DataFrame(rows, columns=[*COMPARE_COLUMNS, "start_time"])
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    for column in (*METRIC_COLUMNS, "train_time_s"):
        df[column] = df[column].astype(float)
    order = {variant: i for i, variant in enumerate(VARIANTS)}
    df["_order"] = df["variant"].map(order).fillna(len(order))
    df = df.sort_values(["_order", "variant", "seed", "start_time"], na_position="last")
    df = df[list(COMPARE_COLUMNS)].reset_index(drop=True)
    df.attrs.update(experiment=name, tracking_uri=uri)
    return df


def format_comparison(df: "pandas.DataFrame") -> str:
    """A fixed-width table of `compare_runs`, or one line saying where no runs were found."""
    if df.empty:
        return (f"no runs in experiment '{df.attrs.get('experiment', '?')}' "
                f"at {df.attrs.get('tracking_uri', '?')}")
    return df.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.1f}")


def load_segmenter(cfg: dict, model_uri: str):
    """The pep.engine.segment.Segmenter inside an MLflow model (models:/, runs:/ or a path),
    resolved against the project's store; one PepError naming the URI when it cannot load."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pep.errors import PepError
    from pep.mlflow_model import PepPyfuncModel

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PepError(f"MLflow model {model_uri} cannot be loaded from {tracking_uri(cfg)}: {first}") from None
    python_model = loaded.unwrap_python_model()
    if not isinstance(python_model, PepPyfuncModel):
        raise PepError(f"MLflow model {model_uri} is not a PEP model (it is {type(python_model).__name__})")
    return python_model.segmenter
