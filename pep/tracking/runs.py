"""MLflow runs: one per (variant, seed), which training, resumption and evaluation share.

Runs are found again by their tags (`variant`, `seed`, `dataset`, `params_hash`), so that a
resumed training continues its crashed run and evaluation adds its metrics to the run of the
model it evaluates instead of starting a stray one. The stages hand a `Tracker` what to record
(pep.engine never imports this package; the command line wires them together).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pep.config import PROJECT_ROOT, flatten, resolve_data_path
from pep.stage_settings import params_hash
from pep.tracking.store import find_experiment, open_client, retrying, tracking_uri, truncate

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

STAGES = ("train", "evaluate")
# MLflow 3's limits (mlflow.utils.validation); a longer value is rejected, not cut.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


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
        self._client = open_client(uri)
        experiment_id = find_experiment(self._client, self.cfg["tracking"]["experiment"], uri)
        identity = self.identity_tags()
        query = " AND ".join(f"tags.{key} = '{value}'" for key, value in identity.items())
        runs = retrying(self._client.search_runs, [experiment_id], query,
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
            retrying(self._client.update_run, self._run_id, status="RUNNING")
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
        run = retrying(self._client.create_run, experiment_id,
                        tags={key: truncate(value, MAX_TAG_LENGTH) for key, value in tags.items()},
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
        logged = retrying(self._client.get_run, self._run_id).data.params
        items = []
        for key, value in params.items():
            text = truncate(value, MAX_PARAM_LENGTH)
            if key not in logged:
                items.append(Param(key, text))
            elif logged[key] != text:
                log.warning("MLflow: param %s stays %r in run %s (now %r)", key, logged[key],
                            self._run_id, text)
        for i in range(0, len(items), PARAMS_PER_BATCH):
            retrying(self._client.log_batch, self._run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._active():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            retrying(self._client.log_batch, self._run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file, or a whole folder, under `artifact_path` of the run's artifacts."""
        if not self._active():
            return
        method = self._client.log_artifacts if Path(path).is_dir() else self._client.log_artifact
        retrying(method, self._run_id, str(path), artifact_path)

    def log_dict(self, obj: dict, name: str) -> None:
        """`obj` as the artifact `name` (JSON or YAML by its extension), e.g. config.json."""
        if self._active():
            retrying(self._client.log_dict, self._run_id, obj, name)

    def log_model(self, weights: str | os.PathLike, state: dict, register: bool = True) -> str | None:
        """The trained model (its weights file and `state`, what the file holds) as the MLflow
        model `model` of this run (pep.tracking.model), with `pep` itself as its code, registered
        as `pep-<variant>` when `register`. Returns the URI that loads it:
        models:/pep-<variant>/<version>, or runs:/<run>/model."""
        if not self._active():
            return None
        import tempfile

        import mlflow
        import pandas as pd

        import pep
        from pep.tracking import model

        name = f"pep-{self.variant}" if register else None
        described = model.description(self.cfg, self.variant, self.seed, state)
        with tempfile.TemporaryDirectory() as tmp:
            description = Path(tmp) / "pep_model.json"
            description.write_text(json.dumps(described, indent=2), encoding="utf-8")
            example = pd.DataFrame({"image": [model.example_image_bytes()]})
            mlflow.set_tracking_uri(tracking_uri(self.cfg))
            # log_model needs the run active; leaving the block marks it finished, and end()
            # gives it the stage's own status afterwards
            with mlflow.start_run(run_id=self._run_id):
                info = retrying(
                    mlflow.pyfunc.log_model, name="model", python_model=str(Path(model.__file__).with_name("entry.py")),
                    artifacts={model.WEIGHTS: str(weights), model.DESCRIPTION: str(description)},
                    code_paths=[str(Path(pep.__file__).parent)], signature=model.signature(),
                    input_example=(example, model.DEFAULT_PARAMS),
                    pip_requirements=model.requirements(), registered_model_name=name,
                    tags=self.identity_tags())
            retrying(self._client.update_run, self._run_id, status="RUNNING")
        if name is None:
            return f"runs:/{self._run_id}/model"
        version = info.registered_model_version
        for key, value in self.identity_tags().items():
            retrying(self._client.set_model_version_tag, name, str(version), key, value)
        return f"models:/{name}/{version}"

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self._active():
            return
        from mlflow.entities import RunTag

        items = [RunTag(key, truncate(value, MAX_TAG_LENGTH)) for key, value in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            retrying(self._client.log_batch, self._run_id, tags=items[i:i + PARAMS_PER_BATCH])

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
        retrying(self._client.set_terminated, self._run_id, status)
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
