"""Checkpoints that survive crashes: written atomically, loaded safely, damaged ones skipped.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over its final name, so a crash (or SIGKILL) mid-write leaves either the old file or the new
one, never half of one. Loading uses `torch.load(weights_only=True)`: a checkpoint can hold
tensors and plain containers only, never code. A checkpoint that fails to load is reported by
name and the next older one is tried.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")
FINAL = "model_final.pt"  # the trained model, beside the checkpoints
LOG = "train_log.jsonl"


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / f"ckpt_{iteration:08d}.pt"


def save_atomic(obj: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest (highest iteration) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest_valid(run_dir: Path, map_location="cpu") -> tuple[dict, Path] | tuple[None, None]:
    """The newest checkpoint that loads; damaged ones are logged as such and skipped."""
    for path in list_checkpoints(run_dir):
        try:
            state = load(path, map_location)
            if not isinstance(state, dict) or "iteration" not in state or "model" not in state:
                raise ValueError("not a training checkpoint (no 'iteration' or 'model')")
            return state, path
        except Exception as exc:  # any failure to read means: do not trust this file
            log.warning("checkpoint %s is damaged and is skipped (%s: %s)", path,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return None, None


def remove_checkpoints(run_dir: Path) -> None:
    for path in list_checkpoints(run_dir):
        path.unlink(missing_ok=True)


def remove_all(run_dir: Path) -> None:
    """Forget a run: its checkpoints, final model and training log."""
    remove_checkpoints(run_dir)
    for name in (FINAL, LOG):
        (Path(run_dir) / name).unlink(missing_ok=True)


def prune(run_dir: Path, keep: int = 2) -> None:
    """Keep the `keep` newest checkpoints; older ones only cost disk."""
    for path in list_checkpoints(run_dir)[keep:]:
        path.unlink(missing_ok=True)
