"""reports/README.md and reports/index.html: what the reports hold and what produced them.

Written by `pep tables` after the tables (and after `pep figures`, which the pipeline runs
first): names the data set, profile, git commit and parameters (the params hash of pep.stage_settings
and the settings that shape the numbers), links every table in its three formats, shows every
figure (one `pep figures` has not drawn yet is listed as "not built yet"), and embeds both
tables, so that the page reads on its own. index.html is the same Markdown rendered by
markdown-it-py, for a browser: open reports/index.html.
"""

from __future__ import annotations

import html
import subprocess
from pathlib import Path

from markdown_it import MarkdownIt

from pep.config import output_path
from pep.jsonfile import StagedOutputs
from pep.reports.tables import SERVER_FOLDER, TABLES_FOLDER, Table, dataset_name, to_markdown
from pep.stage_settings import params_hash

FIGURES = (("training_curves.png", "training curves: losses and learning rate against images seen"),
           ("ap_per_variant.png", "mask AP per variant, seeds and intervals"),
           ("qualitative.png", "qualitative results: val images, ground truth and each variant"))
TABLE_FORMATS = ("md", "tex", "csv")


def git_short_commit(folder: Path) -> str:
    """`git rev-parse --short HEAD` of the project, marked when tracked files changed since;
    "unknown" outside a git checkout or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def key_settings(cfg: dict) -> list[tuple[str, str]]:
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    return [
        ("backbone", f"ResNet-{model['backbone']['depth']}-FPN, "
                     f"{'ImageNet' if model['backbone']['pretrained'] else 'from scratch'}, "
                     f"FPN {model['fpn_channels']} channels, levels {', '.join(model['levels']['features'])}"),
        ("heads", f"{model['head']['convs']} conv(s) x {model['head']['channels']} channels per tower, "
                  f"descriptors D = {model['descriptor_dim']}"),
        ("input", f"shorter side {data['input']['train_min_size']} (train), "
                  f"{data['input']['test_min_size']} (test), max {data['input']['max_size']}"),
        ("training", f"{train['optimizer']} lr {train['lr']}, batch {train['batch_size']}, "
                     f"{train['epochs']} epochs, {train['schedule']} schedule"),
        ("seeds", ", ".join(str(s) for s in train["seeds"])),
        ("bootstrap", f"{cfg['evaluate']['bootstrap']['resamples']} resamples of the val images, "
                      f"seed {cfg['evaluate']['bootstrap']['seed']}"),
    ]


def index_file(cfg: dict) -> Path:
    return output_path(cfg, "reports", "README.md")


def page_file(cfg: dict) -> Path:
    return output_path(cfg, "reports", "index.html")


def write_index(cfg: dict, tables: dict[str, Table], outputs: StagedOutputs) -> Path:
    """reports/README.md and reports/index.html, staged in `outputs` (`pep tables` publishes
    them with the tables); the README's path."""
    reports = output_path(cfg, "reports")
    tables_rel = "/".join(TABLES_FOLDER[1:])
    lines = ["# Reports", "",
             "Written by `pep tables` from `metrics/` (do not edit by hand: it is rewritten on "
             "every run). The same page for a browser: `index.html`.", "",
             "## What produced them", "",
             "| | |", "|:---|:---|",
             f"| data set | {dataset_name(cfg)} (`data.source: {cfg['data']['source']}`, "
             f"`data.root: {cfg['data']['root']}`) |",
             f"| profile | `{cfg['profile']}` |",
             f"| git commit | `{git_short_commit(Path(cfg['params_file']).parent if 'params_file' in cfg else reports)}` |",
             f"| parameters | hash `{params_hash(cfg)}` (pep.stage_settings.params_hash: the settings that "
             "shape the trained model) |"]
    lines += [f"| {name} | {value} |" for name, value in key_settings(cfg)]
    lines += ["", "## Tables", ""]
    for name, what in (("ablation", "the paper's Table 2: the four variants on val, with costs and "
                                    "the paper's numbers beside ours"),
                       ("comparison", "the paper's Table 1: published methods on COCO test-dev, "
                                      "and ours"),
                       ("mechanisms", "what each module finds, merges and loses on val, and the AP of "
                                      "the same models with a module's inference off")):
        if name not in tables:
            lines.append(f"- {name}: not built yet (`pep mechanisms --variant <name>`)")
            continue
        links = ", ".join(f"[{fmt}]({tables_rel}/{name}.{fmt})" for fmt in TABLE_FORMATS)
        lines.append(f"- **{name}** ({links}): {what}")
    lines += ["", f"Our COCO test-dev rows come from `{'/'.join(SERVER_FOLDER)}/<variant>.json`, the "
              "COCO server's numbers for a submission, committed by a person (format: "
              "`pep/reports/tables/comparison.py`).", "", "## Figures", ""]
    for file, what in FIGURES:
        path = reports / "figures" / file
        if path.exists():
            lines += [f"**{what[0].upper() + what[1:]}** ([{file}](figures/{file})):", "",
                      f"![{what}](figures/{file})", ""]
        else:
            lines += [f"- {file}: {what} -- not built yet (`pep figures`)", ""]
    lines += ["## Ablation", "", to_markdown(tables["ablation"]).rstrip("\n"), "",
              "## Comparison", "", to_markdown(tables["comparison"]).rstrip("\n"), ""]
    if "mechanisms" in tables:
        lines += ["## Mechanisms", "", to_markdown(tables["mechanisms"]).rstrip("\n"), ""]
    markdown = "\n".join(lines)
    path = index_file(cfg)
    outputs.write_text(path, markdown)
    outputs.write_text(page_file(cfg), to_html(markdown, f"PEP reproduction: {dataset_name(cfg)}"))
    return path


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2rem 0.6rem; }
th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def to_html(markdown: str, title: str) -> str:
    """A self-contained page of the Markdown (CommonMark with tables; raw HTML is escaped)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def tables_command(cfg: dict) -> int:
    """`pep tables`: the tables, reports/README.md and the page, published together."""
    from pep.reports.tables import table_files, write_tables

    with StagedOutputs([*table_files(cfg), index_file(cfg), page_file(cfg)], "`pep tables`") as outputs:
        tables = write_tables(cfg, outputs=outputs)
        index = write_index(cfg, tables, outputs)
        outputs.publish()
    for table in tables.values():
        print(f"wrote {table.name}.md/.tex/.csv ({len(table.cells)} rows)")
    print(f"wrote {index} and {index.with_name('index.html')}")
    return 0
