"""`pep tables`: the paper's Table 2 (ablation) and Table 1 (comparison), from the metrics files.

Reads only what evaluation wrote and what the project ships:

  metrics/<variant>/val.json            mask stats (percent; mean over seeds, `std` with several)
  metrics/<variant>/val_bootstrap.json  AP per bootstrap resample of the val images (optional)
  metrics/<variant>/test-dev.json       test-dev scored locally (the synthetic set; on real COCO
                                        it holds no stats and is skipped)
  reports/test-dev-server/<variant>.json  the COCO server's answer for a submission, committed by
                                        a person (format below)
  pep/reports/published.yaml            the paper's Table 2 and the published rows of Table 1

and writes reports/tables/{ablation,comparison}.{md,tex,csv}: Markdown for reading, LaTeX
(booktabs, through pandas' Styler) for papers, CSV with plain numbers for scripts.

reports/test-dev-server/<variant>.json, one per submitted variant, percent as the server shows
them (the six keys are required; the rest of the 12 COCO stats may be added):

  {"AP": 40.1, "AP50": 61.0, "AP75": 43.5, "APs": 18.0, "APm": 43.9, "APl": 59.1,
   "submission": "detections_test-dev2017_pep-pep_results.zip", "date": "2026-12-01"}

Only those rows count as COCO test-dev results and are ranked (bold = best) among the published
ones; a row measured on another data set is shown below a rule, labelled with its data set.

The code, by what it builds: pep/reports/results.py reads the metrics and bootstrap files (shared
with `pep figures`); published.py reads published.yaml; table.py holds the Table type, its cell
formatting and the Markdown and LaTeX writers; ablation.py, comparison.py and mechanisms.py build
one table each; this module writes them all.
"""

from __future__ import annotations

from pathlib import Path

from pep.config import output_path
from pep.jsonfile import StagedOutputs, staged_into
from pep.reports.results import METRIC_KEYS, dataset_name, read_bootstrap, read_metrics
from pep.reports.tables.ablation import CI_LEVEL, COST_DIGITS, ablation_table
from pep.reports.tables.comparison import (GROUP_LABELS, SERVER_FOLDER, TEXT_COLUMNS, comparison_table,
                                           read_server_results)
from pep.reports.tables.mechanisms import MECHANISM_AP, MECHANISM_COLUMNS, mechanisms_table, read_mechanisms
from pep.reports.tables.published import PUBLISHED_FILE, read_published
from pep.reports.tables.table import HEADERS, MISSING, Table, latex_escape, to_latex, to_markdown

__all__ = ["CI_LEVEL", "COST_DIGITS", "GROUP_LABELS", "HEADERS", "MECHANISM_AP", "MECHANISM_COLUMNS",
           "METRIC_KEYS", "MISSING", "PUBLISHED_FILE", "SERVER_FOLDER", "TABLES_FOLDER", "TABLE_NAMES",
           "TEXT_COLUMNS", "Table", "ablation_table", "comparison_table", "dataset_name", "latex_escape",
           "mechanisms_table", "read_bootstrap", "read_mechanisms", "read_metrics", "read_published",
           "read_server_results", "table_files", "to_latex", "to_markdown", "write_tables"]

TABLES_FOLDER = ("reports", "tables")
TABLE_NAMES = ("ablation", "comparison", "mechanisms")


def table_files(cfg: dict) -> list[Path]:
    """reports/tables/<name>.{md,tex,csv} of both tables."""
    folder = output_path(cfg, *TABLES_FOLDER)
    return [folder / f"{name}.{fmt}" for name in TABLE_NAMES for fmt in ("md", "tex", "csv")]


def write_tables(cfg: dict, published_path: str | Path = PUBLISHED_FILE,
                 outputs: StagedOutputs | None = None) -> dict[str, Table]:
    """Build both tables and write reports/tables/<name>.{md,tex,csv}; returns the tables.
    Staged in `outputs` for the caller to publish with its other files, or published here."""
    with staged_into(outputs, table_files(cfg), "`pep tables`") as staged:
        published = read_published(published_path)
        metrics = read_metrics(cfg)
        tables = {t.name: t for t in (ablation_table(cfg, metrics, published),
                                      comparison_table(cfg, metrics, published))}
        reports = read_mechanisms(cfg)
        if reports:
            tables["mechanisms"] = mechanisms_table(cfg, reports)
        folder = output_path(cfg, *TABLES_FOLDER)
        for table in tables.values():
            staged.write_text(folder / f"{table.name}.md", to_markdown(table))
            staged.write_text(folder / f"{table.name}.tex", to_latex(table))
            staged.write_text(folder / f"{table.name}.csv",
                              table.numbers.to_csv(index=False, float_format="%.6g"))
    return tables
