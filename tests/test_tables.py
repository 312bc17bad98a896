"""`pep tables`: the paired bootstrap, the ablation and comparison tables, reports/README.md, and
the LaTeX they hold compiled by a real pdflatex."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
import pytest
import yaml
from pycocotools.coco import COCO

from conftest import FAKE100, SHARED
from system_packages import require
from pep.cli import main
from pep.config import PROJECT_ROOT
from pep.data.coco import load_coco
from pep.engine.evaluate import _bootstrap_record
from pep.jsonfile import StagedOutputs
from pep.errors import PepError
from pep.evaluation import STAT_KEYS, bootstrap_ap, evaluate
from pep.reports.tables import read_published, write_tables

VARIANTS = ("baseline", "excavate", "purify", "pep")


# ----------------------------------------------------------------------------- the bootstrap

@pytest.fixture(scope="module")
def fake100():
    gt = load_coco(FAKE100 / "instances_val2014_100.json")
    results = json.loads((FAKE100 / "instances_val2014_fakesegm100_results.json").read_text(encoding="utf-8"))
    return gt, results


def _copied_images(gt: COCO, results: list[dict], draw: list[int]) -> tuple[COCO, list[dict]]:
    """The brute-force reading of a resample: every drawn image (duplicates included) becomes
    an image of its own, with copies of its annotations and detections under a new id."""
    anns, dets = {}, {}
    for a in gt.dataset["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for r in results:
        dets.setdefault(r["image_id"], []).append(r)
    dataset = {"images": [], "annotations": [], "categories": gt.dataset["categories"]}
    copied = []
    for new_id, image_id in enumerate(draw, start=1):  # new ids keep the draw's order
        dataset["images"].append({**gt.imgs[image_id], "id": new_id})
        for a in anns.get(image_id, []):
            dataset["annotations"].append({**copy.deepcopy(a), "id": len(dataset["annotations"]) + 1,
                                           "image_id": new_id})
        copied += [{**r, "image_id": new_id} for r in dets.get(image_id, [])]
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco, copied


def test_bootstrap_matches_brute_force_with_duplicates(fake100):
    gt, results = fake100
    ids = sorted(gt.getImgIds())
    rng = np.random.default_rng(7)
    draws = [ids,  # every image once: the plain AP
             [int(i) for i in np.asarray(ids)[rng.integers(0, len(ids), len(ids))]],
             [ids[3]] * 5 + ids[10:40] + ids[10:20]]  # handmade: heavy duplicates, a subset
    assert len(set(draws[1])) < len(draws[1])  # the random draw does repeat images
    out = bootstrap_ap(gt, results, draws)
    assert out["B"] == 3
    assert out["AP"][0] == pytest.approx(evaluate(gt, results)["stats"]["AP"], abs=1e-12)
    for draw, fast in zip(draws[1:], out["AP"][1:]):
        brute = evaluate(*_copied_images(gt, results, draw))["stats"]["AP"]
        assert fast == pytest.approx(brute, abs=1e-12)


def test_bootstrap_draws_are_documented_and_paired(fake100):
    """A count B draws default_rng(seed).integers over the sorted ids, whatever the results:
    two variants scored on the same images see the same resamples."""
    gt, results = fake100
    ids = np.asarray(sorted(gt.getImgIds()))
    drawn = bootstrap_ap(gt, results, 3, seed=5)
    explicit = ids[np.random.default_rng(5).integers(0, len(ids), size=(3, len(ids)))]
    assert drawn["AP"] == bootstrap_ap(gt, results, explicit.tolist())["AP"]
    other = bootstrap_ap(gt, results[: len(results) // 2], 3, seed=5)  # "another variant"
    assert other["image_ids_hash"] == drawn["image_ids_hash"] and other["seed"] == 5
    assert other["AP"] != drawn["AP"]
    with pytest.raises(PepError, match="not in the ground truth"):
        bootstrap_ap(gt, results, [[ids[0], 999_999_999]])


def test_bootstrap_file_is_the_mean_over_seeds_and_goes_when_off(tmp_path):
    path = tmp_path / "val_bootstrap.json"
    one = {"B": 2, "seed": 0, "image_ids_hash": "h", "AP": [0.30, 0.40]}
    with StagedOutputs([path], "test") as outputs:
        outputs.write_json(path, _bootstrap_record({0: one, 1: {**one, "AP": [0.20, 0.50]}}, [0, 1]))
        outputs.publish()
    data = json.loads(path.read_text())
    assert data["AP"] == [25.0, 45.0] and data["seeds"] == [0, 1] and data["B"] == 2
    with StagedOutputs([path], "test") as outputs:  # bootstrap off: nothing staged for it
        outputs.publish()
    assert not path.exists()  # no stale file to pair with new metrics


# ----------------------------------------------------------------------------- handmade metrics

@pytest.fixture
def project(tmp_path, default_params) -> dict:
    """A project folder (its own params.yaml, for the CLI) whose metrics/ the tests fill by hand."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    return {**copy.deepcopy(default_params), "params_file": str(tmp_path / "params.yaml")}


def _stats(ap: float) -> dict:
    return {key: round(ap + i, 3) for i, key in enumerate(STAT_KEYS)}


def write_metrics(cfg: dict, variant: str, ap: float, seeds=(0,), std: float = 0.5, cost: int = 1,
                  bootstrap: list[float] | None = None, image_ids_hash: str = "same") -> None:
    folder = Path(cfg["params_file"]).parent / "metrics" / variant
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {**_stats(ap), "bbox": _stats(ap + 3), "variant": variant, "split": "val",
               "seeds": list(seeds), "params": 1_000_000 * cost, "flops_per_image": 2e9 * cost,
               "infer_ms_per_image": 10.0 * cost, "train_time_s": 60.0 * cost, "images_seen": 4000}
    if len(seeds) > 1:
        metrics["per_seed"] = {str(s): _stats(ap) for s in seeds}
        metrics["std"] = {key: std for key in STAT_KEYS}
    (folder / "val.json").write_text(json.dumps(metrics), encoding="utf-8")
    if bootstrap is not None:
        (folder / "val_bootstrap.json").write_text(json.dumps(
            {"B": len(bootstrap), "seed": 0, "image_ids_hash": image_ids_hash, "seeds": list(seeds),
             "unit": "percent", "AP": bootstrap}), encoding="utf-8")


def _draws(ap: float, noise: np.ndarray, seed: int) -> list[float]:
    return (ap + noise + np.random.default_rng(seed).normal(0, 0.2, noise.size)).round(3).tolist()


def build(cfg: dict) -> dict:
    """Run write_tables; the text of the six files it writes."""
    write_tables(cfg)
    folder = Path(cfg["params_file"]).parent / "reports" / "tables"
    return {f"{name}.{fmt}": (folder / f"{name}.{fmt}").read_text(encoding="utf-8")
            for name in ("ablation", "comparison") for fmt in ("md", "tex", "csv")}


def _md_rows(markdown: str) -> dict[str, list[str]]:
    """First-column label -> cells, for the first table block of a Markdown file."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| variant") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_one_seed_bold_deltas_and_intervals(project):
    noise = np.random.default_rng(0).normal(0, 1.0, 400)  # shared image difficulty: paired draws
    aps = {"baseline": 30.0, "excavate": 31.5, "purify": 33.0, "pep": 32.0}
    for k, (variant, ap) in enumerate(aps.items()):
        write_metrics(project, variant, ap, cost=k + 1, bootstrap=_draws(ap, noise, k))
    files = build(project)
    rows = _md_rows(files["ablation.md"])

    assert rows["baseline"][0] == "30.0" and "±" not in files["ablation.md"].split("|")[2]
    assert rows["purify"][0] == "**33.0**" and rows["pep"][0] == "32.0"  # best AP in bold
    assert rows["baseline"][6] == "–"  # no gain of baseline over itself
    delta, low, high = [float(x) for x in
                        rows["excavate"][6].replace("[", "").replace("]", "").replace(",", "").split()]
    assert delta == pytest.approx(1.5) and low < delta < high and high - low < 1.5
    assert rows["purify"][6].startswith("**+3.0 [")  # best gain in bold
    # cost columns: lower is better, so baseline (cost 1) wins every one
    assert all(cell.startswith("**") for cell in rows["baseline"][7:11])
    assert "one seed" in files["ablation.md"] and "paired bootstrap" in files["ablation.md"]
    assert "not comparable" in files["ablation.md"]  # synthetic set against the paper's COCO
    assert "38.5 (-8.5)" in files["ablation.md"]  # paper's baseline AP, ours - theirs

    csv = pd.read_csv(Path(project["params_file"]).parent / "reports/tables/ablation.csv")
    assert list(csv["variant"]) == list(VARIANTS)
    assert csv.loc[csv.variant == "pep", "AP"].item() == 32.0
    assert csv.loc[csv.variant == "excavate", "delta_AP"].item() == pytest.approx(1.5)
    assert csv["delta_AP_ci_low"].dtype == float and np.isnan(csv.loc[0, "delta_AP_ci_low"])
    assert csv.loc[csv.variant == "pep", "diff_AP"].item() == pytest.approx(32.0 - 40.6)


def test_several_seeds_show_mean_std_and_the_seed_count(project):
    noise = np.random.default_rng(1).normal(0, 1.0, 300)
    for k, (variant, ap) in enumerate({"baseline": 30.0, "pep": 34.0}.items()):
        write_metrics(project, variant, ap, seeds=(0, 1, 2), std=0.4 + k / 10,
                      bootstrap=_draws(ap, noise, k))
    files = build(project)
    rows = _md_rows(files["ablation.md"])
    assert rows["baseline"][0] == "30.0 ± 0.4" and rows["pep"][0] == "**34.0 ± 0.5**"
    assert rows["pep"][6].startswith("+4.0 [") and "over 3 seeds" in files["ablation.md"]
    # the interval counts the seeds' spread: gain ± t(df) * sqrt(var over image draws + s²/n + s²/n),
    # df by Welch-Satterthwaite, here computed by hand
    gain_draws = np.array(_draws(34.0, noise, 1)) - np.array(_draws(30.0, noise, 0))
    a, b = 0.5 ** 2 / 3, 0.4 ** 2 / 3
    df = (a + b) ** 2 / (a ** 2 / 2 + b ** 2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * np.sqrt(gain_draws.var(ddof=1) + a + b)
    csv = pd.read_csv(Path(project["params_file"]).parent / "reports/tables/ablation.csv")
    pep_row = csv[csv.variant == "pep"].iloc[0]
    assert pep_row.delta_AP_ci_low == pytest.approx(4.0 - half, abs=1e-4)
    assert pep_row.delta_AP_ci_high == pytest.approx(4.0 + half, abs=1e-4)
    assert half > 2.5 * np.std(gain_draws)  # wider than the images' noise alone
    assert "the seeds'" in files["ablation.md"] and "Welch-Satterthwaite" in files["ablation.md"]
    assert r"34.0 $\pm$ 0.5" in files["ablation.tex"] and r"$\Delta$AP" in files["ablation.tex"]
    assert csv["AP_std"].tolist() == [0.4, 0.5] and csv["seeds"].tolist() == [3, 3]


def test_missing_variants_bootstrap_and_baseline(project):
    write_metrics(project, "baseline", 30.0)  # no bootstrap files at all
    write_metrics(project, "pep", 33.0)
    md = build(project)["ablation.md"]
    rows = _md_rows(md)
    assert set(rows) >= {"baseline", "pep"} and "excavate" not in rows and "purify" not in rows
    assert "left out: excavate, purify" in md
    assert rows["pep"][6] == "+3.0" and "no 95% intervals" in md

    (Path(project["params_file"]).parent / "metrics/baseline/val.json").unlink()
    md = build(project)["ablation.md"]
    assert "No baseline metrics" in md and _md_rows(md)["pep"][6] == "–"
    assert "left out: baseline, excavate, purify" in md


def test_unpaired_bootstrap_gets_no_interval(project):
    noise = np.zeros(50)
    write_metrics(project, "baseline", 30.0, bootstrap=_draws(30.0, noise, 0))
    write_metrics(project, "pep", 33.0, bootstrap=_draws(33.0, noise, 1), image_ids_hash="other")
    md = build(project)["ablation.md"]
    assert _md_rows(md)["pep"][6] == "+3.0" and "no interval for pep" in md


def test_no_metrics_names_the_folder(project):
    with pytest.raises(PepError, match=r"metrics: no metrics found"):
        write_tables(project)
    assert main(["tables", "--params", project["params_file"]]) == 2


def test_bad_metrics_file_is_named(project):
    write_metrics(project, "pep", 30.0)
    path = Path(project["params_file"]).parent / "metrics/pep/val.json"
    metrics = json.loads(path.read_text())
    del metrics["AP75"]
    path.write_text(json.dumps(metrics))
    with pytest.raises(PepError, match=r"pep/val.json: 'AP75' is missing"):
        write_tables(project)


def test_comparison_keeps_other_data_apart_and_ranks_coco_rows(project):
    root = Path(project["params_file"]).parent
    write_metrics(project, "pep", 30.0)
    (root / "metrics/pep/test-dev.json").write_text(json.dumps(
        {**_stats(95.0), "variant": "pep", "split": "test-dev", "seed": 0, "scored": "locally"}))
    md = build(project)["comparison.md"]
    ranked, _, apart = md.partition("Measured on another data set (synthetic)")
    assert "ours: pep" not in ranked and "| ours: pep | R18-FPN |" in apart
    assert "**95.0**" not in md  # the synthetic row is never ranked, however high
    assert ("| PEP (paper) | R101-FPN | Su et al. 2023, arXiv:2304.08826 | PEP paper, Table 1 | "
            "COCO test-dev2017 | **40.9** |") in md
    assert ("| CondInst | R101-FPN | Tian et al. 2020, ECCV | PEP paper, Table 1 [34] | COCO test-dev2017 "
            "| 39.1 | 60.9 | 42.0 | 21.5 | 41.7 | 50.9 |") in md
    assert md.index("*Two-stage methods:*") < md.index("| MNC |") < md.index("*One-stage methods:*") \
        < md.index("| YOLACT |")
    assert "27 rows, 26 methods besides PEP" in md and "No COCO test-dev result of ours yet" in md

    # the COCO server's numbers, committed by a person, are ranked with the published rows
    server = root / "reports/test-dev-server"
    server.mkdir(parents=True)
    (server / "pep.json").write_text(json.dumps({"AP": 41.2, "AP50": 61.0, "AP75": 44.0, "APs": 18.5,
                                                 "APm": 44.0, "APl": 59.0}))
    files = build(project)
    ranked = files["comparison.md"].partition("Measured on another data set")[0]
    assert "| ours: pep | R18-FPN | this reproduction | COCO server | COCO test-dev2017 | **41.2** |" in ranked
    assert ranked.index("*One-stage methods:*") < ranked.index("| ours: pep |")
    assert "**40.9**" not in ranked and "**61.8**" in ranked  # AP50: HTC's
    tex = files["comparison.tex"]
    assert tex.index(r"\multicolumn{11}{l}{\emph{Measured on another data set") \
        > tex.index("ours: pep & R18-FPN & this reproduction & COCO server")
    assert tex.index(r"\multicolumn{11}{l}{\emph{Two-stage methods}}") < tex.index("MNC &")
    csv = pd.read_csv(root / "reports/tables/comparison.csv")
    assert csv.loc[csv["reported by"] == "scored locally", "ranked"].item() == False  # noqa: E712
    assert csv.loc[csv["reported by"] == "COCO server", "group"].item() == "one-stage"
    assert np.isnan(csv.loc[csv.method == "FCIS", "AP75"].item())

    # real COCO: test-dev.json records the submission, unscored; it makes no row
    (root / "metrics/pep/test-dev.json").write_text(json.dumps(
        {"variant": "pep", "split": "test-dev", "seed": 0, "scored": "not here: upload it"}))
    assert "Measured on another data set" not in build(project)["comparison.md"]

    (server / "pep.json").write_text(json.dumps({k: 0.4 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}))
    with pytest.raises(PepError, match="look like fractions"):
        write_tables(project)


PAPER_TEXT = SHARED / "paper" / "pep-arxiv-2304.08826.txt"


def paper_table_1() -> list[tuple[str, list[float | None]]]:
    """The rows of Table 1 as the paper's text prints them: name | backbone | six cells |."""
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines()
    first = lines.index("Two-stage methods | |||||||") + 1
    rows = []
    for line in lines[first:]:
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == "One-stage methods":
            continue
        if cells[0] == "Ours":
            return rows
        rows.append((cells[0], [None if c == "-" else float(c) for c in cells[2:8]]))
    raise AssertionError("Table 1 has no 'Ours' row")


def test_comparison_csv_holds_every_cell_of_the_papers_table_1(project):
    write_metrics(project, "pep", 30.0)
    build(project)
    csv = pd.read_csv(Path(project["params_file"]).parent / "reports/tables/comparison.csv")
    published = csv[csv["reported by"].str.startswith("PEP paper") & (csv.method != "PEP (paper)")]
    expected = paper_table_1()
    assert len(expected) == len(published) == 26
    for (name, cells), (_, row) in zip(expected, published.iterrows()):
        # the paper's names, its spacing around "+" aside
        assert row.method.replace(" + ", "+") == name.split(" [")[0], (row.method, name)
        got = [None if np.isnan(row[k]) else row[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        assert got == cells, name
        assert row.citation and row.ranked
    assert list(published.group[:12]) == ["two-stage"] * 12 and set(published.group[12:]) == {"one-stage"}


def test_published_rows_are_complete(tmp_path):
    published = read_published()
    assert set(published["ablation"]["rows"]) == set(VARIANTS)
    assert published["ablation"]["rows"]["pep"] == {"AP": 40.6, "AP50": 61.0, "AP75": 43.2,
                                                    "APs": 17.7, "APm": 44.3, "APl": 59.8}
    assert all(row["citation"] for row in published["comparison"]["rows"])
    broken = yaml.safe_load((Path(__file__).parent.parent / "pep/reports/published.yaml").read_text())
    broken["ablation"]["rows"]["pep"]["AP"] = "forty"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(PepError, match=r"ablation.rows.pep: 'AP' is 'forty'"):
        read_published(tmp_path / "p.yaml")


def test_readme_links_tables_and_figures(project):
    root = Path(project["params_file"]).parent
    write_metrics(project, "baseline", 30.0)
    (root / "reports/figures").mkdir(parents=True)
    (root / "reports/figures/ap_per_variant.png").write_bytes(b"\x89PNG")
    assert main(["tables", "--params", project["params_file"]]) == 0
    readme = (root / "reports/README.md").read_text(encoding="utf-8")
    from pep.stage_settings import params_hash

    for name in ("ablation", "comparison"):
        for fmt in ("md", "tex", "csv"):
            assert f"[{fmt}](tables/{name}.{fmt})" in readme
            assert (root / "reports/tables" / f"{name}.{fmt}").exists()
    assert "[ap_per_variant.png](figures/ap_per_variant.png)" in readme
    assert "training_curves.png: " in readme and "qualitative.png: " in readme
    assert readme.count("not built yet") == 3 and "- mechanisms: not built yet" in readme
    assert params_hash(project) in readme and "| profile | `default` |" in readme
    assert "synthetic crowded-shapes" in readme and "| git commit | `unknown` |" in readme  # tmp: no git
    assert "| baseline | 30.0 |" in readme  # the ablation table, embedded


# ----------------------------------------------------------------------------- LaTeX

def _latex_ready() -> bool:
    if not shutil.which("pdflatex") or not shutil.which("kpsewhich"):
        return False
    found = subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True)
    return found.returncode == 0 and bool(found.stdout.strip())


@pytest.fixture(scope="session")
def pdflatex() -> str:
    """pdflatex with booktabs, installed once per session where missing (texlive-latex-base has
    pdflatex, booktabs is in -recommended: about 15 MB of downloads, 19 s measured here)."""
    require("pdflatex with booktabs", ["texlive-latex-base", "texlive-latex-recommended"], _latex_ready)
    return shutil.which("pdflatex")


def test_latex_tables_compile(project, pdflatex):
    """Both .tex files in a minimal document, with %, _, ±, Δ and -- in the cells and captions."""
    cfg = copy.deepcopy(project)
    cfg["data"].update(source="custom", root="data/my_set_100%#1")
    noise = np.random.default_rng(2).normal(0, 1.0, 100)
    for k, variant in enumerate(("baseline", "purify", "pep")):
        write_metrics(cfg, variant, 30.0 + k, seeds=(0, 1), bootstrap=_draws(30.0 + k, noise, k))
    root = Path(cfg["params_file"]).parent
    (root / "metrics/pep/test-dev.json").write_text(json.dumps({**_stats(31.0), "variant": "pep"}))
    write_tables(cfg)
    folder = root / "reports/tables"
    tex = (folder / "ablation.tex").read_text(encoding="utf-8")
    assert r"my\_set\_100\%\#1" in tex and r"\toprule" in tex and r"\bfseries" in tex
    (folder / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n"
                                    "\\begin{document}\n\\input{ablation.tex}\n\\input{comparison.tex}\n"
                                    "\\end{document}\n", encoding="utf-8")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(encoding="latin-1")
    assert done.returncode == 0, log[-3000:]
    assert (folder / "doc.pdf").stat().st_size > 1000
    assert "LaTeX Error" not in log and "Missing character" not in log


def test_mechanisms_table_from_the_reports_of_two_seeds(project):
    from tests.test_mechanisms import DESCRIPTORS, DETECTIONS, GROUPS, GT

    from pep.engine.mechanisms import count_image, mean_over_seeds, summarise

    root = Path(project["params_file"]).parent
    write_metrics(project, "baseline", 30.0)
    counts = count_image(**GT, **DESCRIPTORS, groups=GROUPS, **DETECTIONS)
    per_seed = {str(s): {"ap": {"as_trained": {"AP": 30.0 + s}, "matrix_nms": {"AP": 31.0 + s},
                                "no_mining": {"AP": 29.0}, "neither": {"AP": 30.5}},
                         **summarise(counts, merged=True)} for s in (0, 1)}
    report = {"variant": "pep", "split": "val", "seeds": [0, 1], "match_iou": 0.5,
              "mean": mean_over_seeds(per_seed), "per_seed": per_seed,
              "data": {"train": {"instances": 200, "without_own_cell": 3, "share": 0.015, "overlapping_same_class": 20,
                                 "overlapping_share": 0.1, "overlapping_pairs": 10, "overlap_iou": 0.5},
                       "val": {"instances": 50, "without_own_cell": 1, "share": 0.02, "overlapping_same_class": 4,
                               "overlapping_share": 0.08, "overlapping_pairs": 2, "overlap_iou": 0.5}}}
    (root / "metrics/pep").mkdir(parents=True)
    (root / "metrics/pep/mechanisms.json").write_text(json.dumps(report), encoding="utf-8")
    assert main(["tables", "--params", project["params_file"]]) == 0
    md = (root / "reports/tables/mechanisms.md").read_text(encoding="utf-8")
    row = _md_rows(md)["pep"]
    # originals find 2 of 3 instances, detections 2; merge recall 100%, false merges 100%
    assert row[:2] == ["66.7 ± 0.0", "66.7 ± 0.0"] and row[7:9] == ["100.0 ± 0.0", "100.0 ± 0.0"]
    assert row[-4:] == ["30.5 ± 0.7", "29.0 ± 0.0", "31.5 ± 0.7", "30.5 ± 0.0"]
    assert "train 1.5% (3 of 200), val 2.0% (1 of 50)" in md
    assert "overlap by IoU >= 0.5: train 10.0% (20 of 200), val 8.0% (4 of 50)" in md
    csv = pd.read_csv(root / "reports/tables/mechanisms.csv")
    assert csv.loc[0, "recovered_share"] == 100.0 and csv.loc[0, "AP_matrix_nms"] == 31.5
    readme = (root / "reports/README.md").read_text(encoding="utf-8")
    assert "## Mechanisms" in readme and "[csv](tables/mechanisms.csv)" in readme
