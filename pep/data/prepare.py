"""The pipeline's `data` stage: put the active profile's data set in place, whatever its source.

Every profile's data has one home that DVC and Snakemake track: `data/<profile>/`. The stage's
command is the same for every profile (`pep data prepare`), so the workflow files need no
branches:

- `synth`: the embedded data set is generated into data.root (`data/<profile>` by convention);
- `coco`: COCO 2017 is downloaded, verified and unpacked into data.root (nothing is fetched
  when its folders and annotation files are already there, e.g. a cluster's shared copy);
- `custom`: nothing to fetch; the files named by params must exist.

When data.root lies outside `data/<profile>/` (a shared copy of COCO on a cluster, your own
data set), `data/<profile>/manifest.json` records where the data is and the checksums of its
annotation files, so the stages after it rerun when those files change and the stage is rerun.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pep.config import output_path, resolve_data_path
from pep.errors import PepError
from pep.jsonfile import write_json_atomic

MANIFEST = "manifest.json"
ANNOTATION_KEYS = ("train_annotations", "val_annotations", "test_dev_info")
IMAGE_KEYS = ("train_images", "val_images", "test_dev_images")


def profile_data_dir(cfg: dict) -> Path:
    """`data/<profile>/`: the output of the data stage that DVC and Snakemake track."""
    return output_path(cfg, "data", cfg["profile"])


def prepare(cfg: dict, progress: bool = True, mirror: str | None = None) -> dict:
    """Make the profile's data ready; returns a summary for the command line."""
    source = cfg["data"]["source"]
    root = resolve_data_path(cfg, "root")
    if source == "synth":
        from pep.data.synth import generate

        summary = generate(cfg["data"]["synth"], root, progress=progress)
        done = f"generated {sum(summary['images'].values())} images in {summary['seconds']:.1f} s"
    elif source == "coco" and all(resolve_data_path(cfg, key).exists() for key in ANNOTATION_KEYS + IMAGE_KEYS):
        done = "COCO found in place, nothing downloaded"  # e.g. a cluster's shared copy
    elif source == "coco":
        from pep.data.download import download_for_params, human_size

        if not cfg["data"]["download"]["files"]:
            raise PepError(f"profile '{cfg['profile']}': data.source is coco but data.download.files is "
                           "empty; list the archives to fetch, or use data.source: custom for a copy "
                           "that is already in place")
        outcomes = download_for_params(cfg, root, mirror=mirror, progress=progress)
        fetched = sum(o.downloaded for o in outcomes)
        done = f"{len(outcomes)} archive(s) ready, {human_size(fetched)} downloaded"
    elif source == "custom":
        done = "a data set in place"
    else:  # the schema allows only the three above
        raise PepError(f"data.source: unknown source {source!r}")

    missing = [f"data.{key} -> {resolve_data_path(cfg, key)}" for key in ANNOTATION_KEYS[:2] + IMAGE_KEYS[:2]
               if not resolve_data_path(cfg, key).exists()]
    if missing:
        raise PepError(f"profile '{cfg['profile']}': the data set is incomplete after preparing it; "
                       "missing: " + "; ".join(missing))

    home = profile_data_dir(cfg)
    if not _inside(root, home):
        write_manifest(cfg, home)
        done += f"; {home / MANIFEST} points at it"
    return {"source": source, "root": str(root), "done": done}


def write_manifest(cfg: dict, home: Path) -> Path:
    """Where an outside data set is, with its annotation files' md5: what downstream stages see."""
    files = {}
    for key in ANNOTATION_KEYS:
        path = resolve_data_path(cfg, key)
        if path.is_file():
            files[key] = {"path": cfg["data"][key], "bytes": path.stat().st_size, "md5": _md5(path)}
    images = {key: cfg["data"][key] for key in IMAGE_KEYS}
    home.mkdir(parents=True, exist_ok=True)
    manifest = home / MANIFEST
    # paths as params.yaml gives them (relative to the project, or a cluster's shared copy)
    write_json_atomic(manifest, {"source": cfg["data"]["source"], "root": cfg["data"]["root"],
                                 "annotations": files, "images": images})
    return manifest


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_command(cfg: dict, mirror: str | None = None, progress: bool = True) -> int:
    """`pep data prepare`: the pipeline's data stage."""
    summary = prepare(cfg, progress=progress, mirror=mirror)
    print(f"profile {cfg['profile']}: {summary['source']} data at {summary['root']}: {summary['done']}")
    return 0
