"""`pep compare`: the experiment's runs side by side, in the paper's variant order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pep.config import VARIANTS
from pep.tracking.store import open_client, retrying, sqlite_file, tracking_uri

if TYPE_CHECKING:
    import pandas

METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COMPARE_COLUMNS = ("variant", "seed", *METRIC_COLUMNS, "train_time_s", "status", "run_id")


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
        client = open_client(uri)
        experiment = retrying(client.get_experiment_by_name, name)
        token = None
        while experiment is not None:
            page = retrying(client.search_runs, [experiment.experiment_id], max_results=1000,
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
