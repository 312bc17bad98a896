"""Training curves from train_log.jsonl, as a PNG: what people look at before any table."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from pep.errors import PepError  # noqa: E402


def read_log(path: Path) -> list[dict]:
    """The records of a train_log.jsonl; a bad line is a PepError naming the file and line."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PepError(f"{path}: line {number} is not valid JSON ({exc})") from None
        if not isinstance(record, dict) or "iteration" not in record or "loss" not in record:
            raise PepError(f"{path}: line {number} has no 'iteration' or 'loss'")
        records.append(record)
    return records


def plot_training_curves(log_file: Path, png: Path, title: str = "") -> Path:
    """Total and per-term losses (log scale), and the learning rate, against iterations."""
    records = read_log(log_file)
    its = [r["iteration"] for r in records]
    terms = [k for k in records[0] if k.startswith("loss")] if records else []
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[3, 1])
    for key in terms:
        ax_loss.plot(its, [r[key] for r in records], label=key, linewidth=2 if key == "loss" else 1)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8, ncol=2)
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title)
    ax_lr.plot(its, [r["lr"] for r in records], color="black")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
