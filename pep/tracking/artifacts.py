"""Artifacts stored relative to the project's MLflow store, so a moved or cloned project works.

MLflow writes a sqlite store's artifact locations as absolute file URIs (it resolves even a
relative one against the working directory), so a project moved to another folder would write
its artifacts back to the old place, and a clone would read none. pep's experiments therefore
keep their artifacts at

    pep-artifacts:mlartifacts/<experiment id>/...

a path relative to the folder of the sqlite file (the project root for `sqlite:///mlflow.db`).
This module is MLflow's artifact repository for that scheme (registered through the
`mlflow.artifact_repository` entry point in pyproject.toml): it maps the URI to files there and
does everything else as MLflow's local repository does. The store's folder comes from the
tracking URI MLflow hands over, else from `mlflow server`'s backend store, else from the
process's tracking URI; `mlflow ui` started in the project folder finds it too.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from pep.tracking.store import SCHEME, sqlite_file


def _store_folder(tracking_uri: str | None) -> Path:
    import mlflow
    from mlflow.server.constants import BACKEND_STORE_URI_ENV_VAR

    for uri in (tracking_uri, os.environ.get(BACKEND_STORE_URI_ENV_VAR), mlflow.get_tracking_uri()):
        db = sqlite_file(uri) if uri else None
        if db is not None:
            return Path(os.path.abspath(db)).parent
    raise MlflowException(f"{SCHEME}: URIs are paths relative to the folder of a sqlite store, but "
                          f"the tracking URI is {tracking_uri or mlflow.get_tracking_uri()!r}; set "
                          "MLFLOW_TRACKING_URI=sqlite:///<project>/mlflow.db")


class ProjectArtifactRepository(LocalArtifactRepository):
    """`pep-artifacts:<relative path>`: MLflow's local repository at <store folder>/<path>."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        relative = artifact_uri[len(SCHEME) + 1:].lstrip("/")
        if not artifact_uri.startswith(f"{SCHEME}:") or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise MlflowException(f"{artifact_uri!r} is not a {SCHEME}: URI of a relative path")
        local = _store_folder(tracking_uri) / relative
        super().__init__(local.as_uri(), tracking_uri, registry_uri)
