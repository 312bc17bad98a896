"""One pipeline, two workflow tools: dvc.yaml and the Snakefile describe the same DAG, and both
really run it, on this machine and (Snakemake) on a real one-node SLURM cluster.

The end-to-end tests run the whole pipeline on a project copy whose params shrink the default
profile (a few dozen images, one epoch); every command, output and dependency is the real one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from pep.config import PROJECT_ROOT, VARIANTS

from slurm_cluster import job_ids_in, job_info, run_snakemake_on_slurm, start_snakemake_on_slurm  # noqa: E402  (tests/ is on sys.path)
from system_packages import require
from tiny_pipeline import BIN, copy_built, copy_project, sh, tiny_params  # noqa: E402

pytest_plugins = ["slurm_cluster"]

LOG_SUFFIX = re.compile(r" 2>&1 \| tee (\S+)$")  # Snakemake also keeps each job's output in a log
STOP_TRAP = "trap '' TERM USR1; "  # training's shell outlives the stop signal (pep.engine.preemption)
TIMING_KEYS = {"train_time_s", "infer_ms_per_image"}
README_EXP_SHOW = re.search(r"^dvc exp show --drop '\.\*' --keep '[^']+'", (PROJECT_ROOT / "README.md").read_text(),
                            re.M).group(0)


# -- one DAG -------------------------------------------------------------------------------------

def dvc_stages(root: Path) -> dict[str, dict]:
    """Every stage of dvc.yaml, resolved (foreach and matrix expanded, ${...} filled in) by DVC
    itself. A dependency on a folder that holds other stages' outputs (`runs/pep`, every seed's
    run) stands for those outputs, as it does in DVC's graph."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            files = [d for d in stage.deps if not isinstance(d, ParamsDependency)]
            params = [key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params]
            stages[stage.name] = {
                "cmd": stage.cmd,
                "inputs": {os.path.relpath(d.fs_path, root) for d in files},
                "outputs": {os.path.relpath(o.fs_path, root) for o in stage.outs},
                "params": set(params)}
    outputs = {out for stage in stages.values() for out in stage["outputs"]}
    for stage in stages.values():
        stage["inputs"] = {o for i in stage["inputs"] for o in
                           ([i] if i in outputs else sorted(o for o in outputs if o.startswith(i + "/")) or [i])}
    return stages


def dry_run_jobs(out: str):
    """(name, fields, block) of each job of a Snakemake dry run's output but `all`; the name is
    keyed like DVC's stages (`rule@wildcard`, or `rule@a-b` for several wildcards, as DVC names
    a matrix' stages)."""
    for block in re.split(r"\n(?=rule \w+:)", out):
        head = re.match(r"rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, re.M))
        wildcards = [w.split("=", 1)[1] for w in fields.get("wildcards", "").split(", ") if w]
        yield head.group(1) + (f"@{'-'.join(wildcards)}" if wildcards else ""), fields, block


def snakemake_jobs(root: Path) -> dict[str, dict]:
    """Every job of a dry run from scratch."""
    out = sh(BIN / "snakemake", "--dry-run", "--forceall", "--printshellcmds", cwd=root).stdout
    jobs = {}
    for name, fields, block in dry_run_jobs(out):
        wildcards = dict(w.split("=", 1) for w in fields.get("wildcards", "").split(", ") if w)
        command = re.search(r"^Shell command: (.*)$", block, re.M).group(1)
        jobs[name] = {"cmd": LOG_SUFFIX.sub("", command.removeprefix(STOP_TRAP)), "wildcards": wildcards,
                      "inputs": set(fields.get("input", "").split(", ")) - {""},
                      "outputs": {o.removesuffix(" (update)") for o in fields["output"].split(", ")}}
    return jobs


def test_dvc_yaml_and_snakefile_describe_one_dag(tmp_path):
    project = copy_project(tmp_path / "p", {"train": {**tiny_params()["train"], "seeds": [0, 1]}})
    dvc = dvc_stages(project)
    smk = snakemake_jobs(project)
    # DVC writes the settings files in a stage of its own; Snakemake when it reads the workflow
    settings = dvc.pop("settings")
    assert settings["outputs"] == {"settings"} and "params.yaml" in settings["inputs"]
    assert set(dvc) == set(smk), f"stages only in dvc.yaml: {set(dvc) - set(smk)}; only in the Snakefile: {set(smk) - set(dvc)}"
    jobs = {"data", "tables", "figures", *(f"{s}@{v}" for s in ("evaluate", "mechanisms", "predict") for v in VARIANTS),
            *(f"train@{v}-{seed}" for v in VARIANTS for seed in (0, 1))}
    assert jobs <= set(dvc)
    for name, stage in dvc.items():
        job = smk[name]
        assert job["cmd"] == stage["cmd"], f"{name}: the commands differ"
        assert job["inputs"] == stage["inputs"], f"{name}: inputs differ: {job['inputs'] ^ stage['inputs']}"
        assert job["outputs"] == stage["outputs"], f"{name}: outputs differ: {job['outputs'] ^ stage['outputs']}"
        # a job's settings come from its own settings file alone, never from params.yaml keys
        assert not stage["params"], f"{name}: depends on params.yaml keys {stage['params']}"
        own = {i for i in stage["inputs"] if i.startswith("settings/")}
        assert len(own) == 1 and (project / next(iter(own))).is_file(), f"{name}: settings files {own}"
    assert dvc["train@pep-1"]["inputs"] >= {"settings/train-pep.json"}
    assert {"runs/pep/seed0", "runs/pep/seed1"} <= dvc["evaluate@pep"]["inputs"]
    # the first seed's model submits; every seed is scored on test-dev where it can be
    assert {"runs/pep/seed0", "runs/pep/seed1"} <= dvc["predict@pep"]["inputs"]
    assert {"runs/pep/seed0", "runs/pep/seed1"} <= dvc["mechanisms@pep"]["inputs"]


def test_snakemake_lint_is_clean_but_for_environments():
    """Every lint but one: rules name no conda environment, since none could install the `pep`
    package (Snakemake copies the environment file away from the project); jobs run in the
    project's .venv (README, "Environments")."""
    proc = sh(BIN / "snakemake", "--lint", cwd=PROJECT_ROOT, check=False)
    lints = re.findall(r"^\s+\* (.*)$", proc.stdout + proc.stderr, re.M)
    assert lints and set(lints) == {"Specify a conda environment or container for each rule.:"}, lints
    assert "conda:" not in "".join(p.read_text() for p in (PROJECT_ROOT / "workflow" / "rules").glob("*.smk"))


def test_training_jobs_ask_slurm_for_what_params_say(tmp_path):
    """The resources a training job asks for follow params.yaml `cluster` (the coco profile's
    node of 8 GPUs here); the slurm plugin turns them into --gpus, --cpus-per-gpu, --mem, -t."""
    def train_resources(project: Path) -> dict:
        out = sh(BIN / "snakemake", "--dry-run", "--forceall", "runs/pep/seed0", cwd=project).stdout
        block = out[out.index("rule train:"):]
        return dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", block).group(1).split(", "))

    project = copy_project(tmp_path / "p", {"profile": "coco"})
    resources = train_resources(project)
    assert resources["nodes"] == "1"  # eight GPUs of one node, not spread over several
    assert resources["gpu"] == "8" and resources["cpus_per_gpu"] == "8" and resources["cpus_per_task"] == "0"
    assert resources["mem_mb"] == "256000" and resources["runtime"] == "1440"
    assert resources["slurm_extra"] == "--signal=TERM@600"  # SIGTERM 10 minutes before the limit
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["coco"]["cluster"]["train"]["nodes"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    resources = train_resources(project)
    assert resources["nodes"] == "2" and resources["gpu"] == "16"  # gpus are per node


def test_the_local_profile_never_runs_more_gpu_jobs_than_it_has_gpus(tmp_path):
    """Three one-GPU jobs and two two-thread CPU jobs under the default profile on a machine of
    `--cores 5`: the GPU jobs run one at a time (the profile's gpu=1), the CPU jobs side by side."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: expand("gpu{i}.txt", i=range(3)), expand("cpu{i}.txt", i=range(2))\n'
        'rule gpu:\n    output: "gpu{i}.txt"\n    resources: gpu=1\n'
        '    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"\n'
        'rule cpu:\n    output: "cpu{i}.txt"\n    threads: 2\n'
        '    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"\n')
    sh(BIN / "snakemake", "--profile", PROJECT_ROOT / "workflow" / "profiles" / "default", "--cores", "5",
       cwd=tmp_path)

    def spans(kind: str) -> list[tuple[float, float]]:
        return sorted(tuple(map(float, (tmp_path / f"{kind}{i}.txt").read_text().split()))
                      for i in range(3 if kind == "gpu" else 2))

    gpu = spans("gpu")
    assert all(end <= start for (_, end), (start, _) in zip(gpu, gpu[1:])), gpu  # never two at once
    (a_start, a_end), (b_start, b_end) = spans("cpu")
    assert b_start < a_end  # two jobs of 2 threads and one of 1 fit 5 cores together


# -- the pipeline, run ---------------------------------------------------------------------------

def result_numbers(root: Path, variants=VARIANTS) -> dict:
    """Each variant's val and test-dev numbers, without the timings."""
    out = {}
    for variant in variants:
        for name in ("val.json", "test-dev.json"):
            data = json.loads((root / "metrics" / variant / name).read_text())
            out[f"{variant}/{name}"] = {k: v for k, v in data.items() if k not in TIMING_KEYS}
    return out


EXPECTED_OUTPUTS = ("reports/tables/ablation.md", "reports/tables/ablation.tex", "reports/tables/comparison.csv",
                    "reports/README.md", "reports/index.html", "reports/figures/training_curves.png", "reports/figures/qualitative.png",
                    "reports/figures/ap_per_variant.png", "reports/plots/training_curves.csv",
                    "reports/tables/mechanisms.md", "reports/tables/mechanisms.csv",
                    *(f"metrics/{v}/mechanisms.json" for v in VARIANTS),
                    *(f"submissions/{v}/detections_test-dev2017_pep-{v}_results.zip" for v in VARIANTS))


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_then_nothing(dvc_project, dvc_project_build):
    log = dvc_project_build.log.read_text()
    print(f"dvc repro: {dvc_project_build.status.read_text().split()[1]} s")
    assert "Running stage 'figures'" in log and "Running stage 'tables'" in log
    # not a terminal: training and evaluation print progress lines into the log
    assert re.search(r"^train pep seed 0: iter 4/4 \(100\.0%\) epoch 1\.00/1 \| .* img/s \| loss .* \| lr .* \| "
                     r"peak mem .* \| elapsed \d+:\d\d:\d\d ETA 0:00:00$", log, re.M), log[-3000:]
    assert re.search(r"^evaluate pep seed 0 val: image 6/6 \(100\.0%\) .* ETA 0:00:00$", log, re.M), log[-3000:]
    for name in EXPECTED_OUTPUTS:
        assert (dvc_project / name).stat().st_size > 0, name
    ablation = (dvc_project / "reports/tables/ablation.md").read_text()
    assert all(v in ablation for v in VARIANTS)
    # the mechanism report of pep: each module's inference switched off on the same models
    report = json.loads((dvc_project / "metrics/pep/mechanisms.json").read_text())
    record = report["per_seed"][str(report["seeds"][0])]
    assert set(record["ap"]) == {"as_trained", "no_mining", "matrix_nms", "neither"}
    counts = record["counts"]
    assert counts["images"] > 0 and counts["found_final"] <= counts["found_by_descriptors"] <= counts["instances"]
    assert "merge_recall" in record["rates"] and report["data"]["val"]["instances"] > 0
    assert "## Mechanisms" in (dvc_project / "reports/README.md").read_text()
    started = time.monotonic()
    again = sh(BIN / "dvc", "repro", cwd=dvc_project)
    print(f"no-op dvc repro: {time.monotonic() - started:.1f} s")
    assert "Running stage" not in again.stdout and "up to date" in again.stdout
    metrics = sh(BIN / "dvc", "metrics", "show", "--json", cwd=dvc_project).stdout
    assert "metrics/pep/val.json" in metrics and '"AP"' in metrics
    sh(BIN / "dvc", "plots", "show", "-o", "plots_html", cwd=dvc_project)
    assert (dvc_project / "plots_html" / "index.html").stat().st_size > 0


# As root and on a closed network: no sandbox, and none of Chromium's own connections.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")


def rendered(page: Path, profile: Path) -> dict:
    """What headless Chromium (Debian's, through Selenium and chromedriver) shows of a page:
    each image with whether it loaded and its drawn size, each link, and the tables' text."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())  # returns once the load event has fired: images are done
        return driver.execute_script(
            "return {title: document.title,"
            " images: Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
            "   loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth, height: i.naturalHeight})),"
            " links: Array.from(document.links).map(a => a.getAttribute('href')),"
            " tables: Array.from(document.querySelectorAll('table')).map(t => t.innerText)};")
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_report_page_renders_in_chromium_with_every_image(dvc_project, tmp_path):
    require("Chromium", ["chromium", "chromium-driver"],
            lambda: bool(shutil.which("chromium") and shutil.which("chromedriver")))
    from PIL import Image

    page = dvc_project / "reports" / "index.html"
    shown = rendered(page, tmp_path / "profile")
    assert shown["title"].startswith("PEP reproduction")
    figures = {"figures/training_curves.png", "figures/ap_per_variant.png", "figures/qualitative.png"}
    assert {image["src"] for image in shown["images"]} == figures
    for image in shown["images"]:
        assert image["loaded"], image
        assert (image["width"], image["height"]) == Image.open(page.parent / image["src"]).size
    local = [href for href in shown["links"] if "://" not in href]
    assert {f"tables/{t}.{f}" for t in ("ablation", "comparison") for f in ("md", "tex", "csv")} <= set(local)
    for href in local:
        assert (page.parent / href).is_file(), href
    tables = "\n".join(shown["tables"])
    assert all(variant in tables for variant in VARIANTS) and "PEP (paper)" in tables and "BoundaryFormer" in tables
    # the ablation's and the mechanism report's own columns: both tables are on the page itself
    assert "GFLOPs/img" in tables and "misses recovered (%)" in tables and "AP no mining" in tables, tables[:2000]

    # the check sees a broken image: the same page with one figure gone
    broken = tmp_path / "broken"
    shutil.copytree(page.parent, broken)
    (broken / "figures" / "qualitative.png").unlink()
    missing = [i["src"] for i in rendered(broken / "index.html", tmp_path / "profile2")["images"] if not i["loaded"]]
    assert missing == ["figures/qualitative.png"]


@pytest.mark.slow
def test_one_variants_setting_reruns_its_chain_and_the_reports_only(dvc_project, tmp_path):
    clone = dvc_project  # this test's own copy
    sh("git", "add", "-A", cwd=clone)
    sh("git", "commit", "-qm", "results", cwd=clone)  # an experiment starts from a commit
    proc = sh(BIN / "dvc", "exp", "run", "-S", "variants.purify.dedup=matrix_nms", cwd=clone).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", proc))
    # de-duplication is inference: purify's models are re-scored, not retrained
    assert ran == {"settings", "evaluate@purify", "mechanisms@purify", "predict@purify", "tables", "figures"}, ran
    assert yaml.safe_load((clone / "params.yaml").read_text())["variants"]["purify"]["dedup"] == "matrix_nms"
    assert "matrix_nms" in (clone / "settings" / "evaluate-purify.json").read_text()
    # the README's `dvc exp show` line: a table one can read
    keep = README_EXP_SHOW.split("--keep ")[1].strip("'")
    table = sh(BIN / "dvc", "exp", "show", "--md", "--drop", ".*", "--keep", keep, cwd=clone).stdout
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert len(header) == 1 + 4 * 3 + 6 and "metrics/purify/val.json:AP" in header and "train.lr" in header, header


def _set(params: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        params = params[part]
    params[last] = value


def dvc_status(root: Path) -> set[str]:
    """The stages `dvc status` lists: those whose own dependencies or outputs changed."""
    return set(json.loads(sh(BIN / "dvc", "status", "--json", cwd=root).stdout))


def snakemake_plan(root: Path) -> dict[str, str]:
    """The jobs `snakemake -n` would run, each with its reason."""
    out = sh(BIN / "snakemake", "--dry-run", cwd=root).stdout
    return {name: fields.get("reason", "") for name, fields, _ in dry_run_jobs(out)}


def downstream(stages: dict[str, dict], names: set[str]) -> set[str]:
    """`names` and every stage that consumes their outputs, transitively."""
    found, todo = set(names), list(names)
    while todo:
        outputs = stages[todo.pop()]["outputs"]
        for name, stage in stages.items():
            if name not in found and stage["inputs"] & outputs:
                found.add(name)
                todo.append(name)
    return found


REPORTS = {"tables", "figures"}
SCORING = ("evaluate", "mechanisms", "predict")  # the stages that run every seed's trained model
EVERY = {f"{stage}@{v}" for stage in SCORING for v in VARIANTS}
# (setting, new value, the stages whose own settings change)
CHANGES = [
    ("profiles.coco.cluster.train.runtime_min", 60, set()),
    ("cluster.train.mem_mb", 2000, set()),
    ("data.num_workers", 1, set()),
    ("train.log_every_iters", 5, set()),
    ("train.checkpoint_every_iters", 7, set()),
    ("tracking.system_metrics_interval_s", 0, set()),
    ("evaluate.bootstrap.resamples", 30, {f"evaluate@{v}" for v in VARIANTS} | REPORTS),
    ("variants.purify.dedup", "matrix_nms", {f"{stage}@purify" for stage in SCORING} | REPORTS),
    ("model.inference.score_threshold", 0.1, EVERY | REPORTS),
    ("train.epochs", 2, {f"train@{v}-0" for v in VARIANTS} | REPORTS),
    ("train.seeds", [0, 1], {f"train@{v}-1" for v in VARIANTS} | EVERY | REPORTS),
]


@pytest.mark.slow
def test_dvc_and_snakemake_rerun_the_same_jobs_and_only_where_a_result_can_change(dvc_project, tmp_path):
    """After the DVC-built pipeline, each change makes `dvc status` and `snakemake -n` name the
    same jobs: DVC those whose own settings changed (`dvc repro` then reruns what their new
    outputs feed), Snakemake those and everything downstream of them at once."""
    assert snakemake_plan(dvc_project) == {}, "Snakemake would redo DVC's work"
    for key, value, expected in CHANGES:
        project = tmp_path / key
        copy_built(dvc_project, project)
        params = yaml.safe_load((project / "params.yaml").read_text())
        _set(params, key, value)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        plan = snakemake_plan(project)  # reading the Snakefile refreshes settings/
        listed = dvc_status(project) - {"settings"}  # params.yaml itself changed
        assert listed == expected, f"{key}: dvc status lists {sorted(listed)}"
        # Snakemake names a job's own reason only where no upstream job reruns anyway
        direct = {name for name, reason in plan.items() if reason.startswith(("Updated input files",
                                                                               "Missing output files"))}
        assert direct <= listed, f"{key}: snakemake {sorted(direct)}, dvc {sorted(listed)}"
        assert set(plan) == downstream(dvc_stages(project), listed), f"{key}: {plan}"


@pytest.mark.slow
def test_a_seed_added_or_removed_is_seen_by_dvc_before_any_pep_settings(dvc_project, tmp_path):
    """No `pep settings` first: the new seed's jobs find their settings file already there."""
    project = dvc_project  # this test's own copy
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["seeds"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    new_seed = {f"train@{v}-1" for v in VARIANTS}
    assert dvc_status(project) == {"settings"} | new_seed
    dry = sh(BIN / "dvc", "repro", "--dry", cwd=project).stdout
    assert set(re.findall(r"Running stage '([^']+)'", dry)) == {"settings"} | new_seed, dry
    before = {p.name for p in (project / "settings").iterdir()}
    sh(BIN / "pep", "settings", cwd=project)
    params["train"]["seeds"] = [0]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(BIN / "pep", "settings", cwd=project)
    assert {p.name for p in (project / "settings").iterdir()} == before  # no file of seed 1 left
    assert dvc_status(project) == set()


@pytest.mark.slow
def test_one_workspace_two_tools_agree_after_a_refused_smoke_run_a_reverted_change_and_a_touch(
        dvc_project, tmp_path):
    """In the workspace that DVC built, the moves that made the tools disagree: a smoke run that
    is refused (it left the run folder's time changed), a setting changed and changed back
    (Snakemake compares times, DVC hashes), `snakemake --touch` (Snakemake's time stamp inside
    DVC's folder outputs). After each, neither tool reruns anything."""
    project = dvc_project  # this test's own copy
    refused = sh(BIN / "pep", "train", "--variant", "baseline", "--max-iters", "2", "--no-tracking", cwd=project,
                 check=False)
    assert refused.returncode == 2 and "a smoke run (--max-iters) would replace it" in refused.stderr
    assert snakemake_plan(project) == {} and dvc_status(project) == set()

    params = yaml.safe_load((project / "params.yaml").read_text())
    for resamples in (30, params["evaluate"]["bootstrap"]["resamples"]):
        params["evaluate"]["bootstrap"]["resamples"] = resamples
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        plan = snakemake_plan(project)  # reading the Snakefile refreshes settings/
        if resamples == 30:
            assert {f"evaluate@{v}" for v in VARIANTS} <= set(plan), plan
    assert plan == {}, f"a reverted setting reruns {sorted(plan)}"
    assert dvc_status(project) == set()

    sh(BIN / "snakemake", "--touch", "--forceall", "--cores", "1", cwd=project)
    assert list(project.glob("results/*/.snakemake_timestamp"))  # inside DVC's folder outputs
    assert dvc_status(project) == set() and snakemake_plan(project) == {}


@pytest.mark.slow
def test_snakemake_makes_the_same_outputs_as_dvc(dvc_project, dvc_project_build):
    """In the DVC-built workspace with one variant's outputs and the reports gone, Snakemake plans
    exactly that variant's chain and the reports, runs them with the local profile and makes
    DVC's numbers and mechanism report. (Snakemake's whole DAG from scratch is DVC's, job by job:
    test_dvc_yaml_and_snakefile_describe_one_dag; its data, validation, training and scoring rules
    run from scratch through SLURM in test_snakemake_runs_the_pipeline_through_slurm.)"""
    project, variant = dvc_project, "pep"  # the variant that runs every module
    for name in (f"runs/{variant}", f"results/{variant}", f"metrics/{variant}", f"submissions/{variant}",
                 "reports/tables", "reports/figures", "reports/plots", "reports/README.md", "reports/index.html"):
        path = project / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    chain = {f"train@{variant}-0", *(f"{stage}@{variant}" for stage in SCORING)}
    assert set(snakemake_plan(project)) == chain | REPORTS
    sh(BIN / "snakemake", "--profile", "workflow/profiles/default", "--cores", "2", cwd=project)
    for name in EXPECTED_OUTPUTS:
        assert (project / name).stat().st_size > 0, name
    built = dvc_project_build.project
    assert result_numbers(project) == result_numbers(built)
    mechanisms = f"metrics/{variant}/mechanisms.json"
    assert json.loads((project / mechanisms).read_text()) == json.loads((built / mechanisms).read_text())
    dry = sh(BIN / "snakemake", "--dry-run", cwd=project).stdout
    assert "Nothing to be done" in dry
    # the self-contained report holds every table and figure (the `report()` outputs)
    sh(BIN / "snakemake", "--report", "report.zip", cwd=project)
    with zipfile.ZipFile(project / "report.zip") as z:
        names = z.namelist()
    for name in ("ablation.csv", "comparison.csv", "training_curves.png", "ap_per_variant.png", "qualitative.png"):
        assert any(n.endswith(name) for n in names), (name, names[:40])


@pytest.mark.slow
def test_results_travel_through_a_dvc_remote_without_retraining(dvc_project, tmp_path):
    remote = tmp_path / "remote"
    sh(BIN / "dvc", "remote", "add", "-d", "shared", str(remote), cwd=dvc_project)
    sh("git", "add", "-A", cwd=dvc_project)
    sh("git", "commit", "-qm", "results", cwd=dvc_project)
    sh(BIN / "dvc", "push", cwd=dvc_project)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(dvc_project), str(clone), cwd=tmp_path)
    assert not list(clone.glob("runs/*/seed*/model_final.pt")) and not (clone / "data" / "default").exists()
    # nothing machine-specific: no output names the folder it was made in
    for path in (*clone.glob("reports/**/*.*"), *clone.glob("metrics/**/*.json"), *clone.glob("settings/*.json"),
                 clone / "dvc.lock"):
        if path.suffix in (".json", ".md", ".csv", ".tex", ".html", ".lock"):
            assert str(dvc_project) not in path.read_text(), path
    sh(BIN / "dvc", "pull", cwd=clone)
    assert json.loads(sh(BIN / "dvc", "status", "--json", cwd=clone).stdout) == {}, "a pulled clone reruns something"
    # a change to the report code: the tables and figures must be rebuilt from pulled results
    with open(clone / "pep" / "reports" / "__init__.py", "a") as f:
        f.write("# a reader's edit\n")
    proc = sh(BIN / "dvc", "repro", "--pull", "--allow-missing", cwd=clone)
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    assert ran == {"tables", "figures"}, proc.stdout[-3000:]
    assert not list(clone.glob("runs/*/seed*/ckpt_*.pt"))  # nothing was trained
    assert (clone / "reports/tables/ablation.md").read_text() == (dvc_project / "reports/tables/ablation.md").read_text()
    assert (clone / "reports/figures/qualitative.png").stat().st_size > 0
    assert result_numbers(clone) == result_numbers(dvc_project)


@pytest.mark.slow
@pytest.mark.slurm
def test_snakemake_runs_the_pipeline_through_slurm(slurm_cluster, dvc_project, tmp_path):
    """One variant's chain, every kind of cluster job (data, validation, training and the three
    scoring rules) through SLURM, with DVC's numbers; the other variants run the same rules, and
    Snakemake's whole DAG is DVC's job by job (test_dvc_yaml_and_snakefile_describe_one_dag)."""
    project = copy_project(tmp_path / "slurm")
    variant = "baseline"
    targets = [f"metrics/{variant}/val.json", f"metrics/{variant}/mechanisms.json",
               f"metrics/{variant}/test-dev.json"]
    run = run_snakemake_on_slurm(project, targets, extra_args=["--jobs", "2"], timeout=780)
    assert run.process.returncode == 0, run.process.stdout[-4000:] + run.process.stderr[-4000:]
    submitted = len(run.job_ids)
    assert submitted == 1 + 2 + 1 + len(SCORING), run.job_ids  # data, validate x2, train, scoring
    states = {job_info(j).get("JobState") for j in run.job_ids}
    assert states == {"COMPLETED"}, states
    logs = list((project / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= set(run.job_ids)
    (train_log,) = [p.read_text() for p in logs if "rule_train" in str(p)]
    assert re.search(rf"^train {variant} seed 0: iter 4/4 .* ETA 0:00:00$", train_log, re.M), train_log[-2000:]
    ours, theirs = result_numbers(project, [variant]), result_numbers(dvc_project, [variant])
    assert ours == theirs
    for name in (*targets, f"submissions/{variant}/detections_test-dev2017_pep-{variant}_results.zip"):
        assert (project / name).stat().st_size > 0, name
    assert json.loads((project / targets[1]).read_text()) == json.loads((dvc_project / targets[1]).read_text())


@pytest.mark.slow
@pytest.mark.slurm
def test_a_signalled_training_job_is_resubmitted_and_resumes_to_the_uninterrupted_weights(slurm_cluster, tmp_path):
    """SIGTERM to a training job on SLURM (what `--signal=TERM@N` sends N seconds before its
    time limit, and preemption): the job checkpoints after its iteration and fails with 75,
    Snakemake (the profile's retries) submits it again, and the new job resumes and finishes
    with the weights of an uninterrupted run (the same 1 thread, trained here with `pep train`)."""
    from pep.engine import checkpoint

    project = copy_project(tmp_path / "slurm")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=12, checkpoint_every_iters=1000)  # 48 iterations; no checkpoint but the stop's
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    run_dir = Path("runs/baseline/seed0")

    log = tmp_path / "snakemake.log"
    snakemake = start_snakemake_on_slurm(project, [str(run_dir)], timeout=600, log=log)
    sh(BIN / "pep", "data", "prepare", "--quiet", cwd=reference)
    sh(BIN / "pep", "train", "--variant", "baseline", "--seed", "0", "--no-tracking", cwd=reference, threads=1)
    try:
        train_log = project / run_dir / checkpoint.LOG
        deadline = time.monotonic() + 400
        while snakemake.poll() is None and time.monotonic() < deadline and \
                len(train_log.read_text().splitlines() if train_log.exists() else []) < 5:
            time.sleep(0.2)
        ours = set(job_ids_in(log.read_text()))  # other tests may have jobs on the cluster too
        (first,) = [line.split()[0] for line in sh("squeue", "-h", "-o", "%i %k", cwd=project).stdout.splitlines()
                    if "rule_train" in line and line.split()[0] in ours]
        done_before = len(train_log.read_text().splitlines())
        sh("scancel", "--signal=TERM", first, cwd=project)  # the job's steps, as --signal does
        snakemake.wait(timeout=600)
    finally:
        if snakemake.poll() is None:
            snakemake.send_signal(signal.SIGINT)
            snakemake.wait(timeout=60)
    output = log.read_text()
    assert snakemake.returncode == 0, output[-4000:]
    jobs = job_ids_in(output)
    assert first in jobs and len(jobs) == 4, output[-4000:]  # data, validate@train, train twice
    second = jobs[-1]
    assert job_info(first)["JobState"] == "FAILED" and job_info(second)["JobState"] == "COMPLETED"
    logs = {j: next((project / ".snakemake" / "slurm_logs").rglob(f"{j}.log")).read_text() for j in (first, second)}
    stopped = re.search(r"stopped by SIGTERM after iteration (\d+) of 48", logs[first])
    assert stopped, logs[first][-3000:]
    iteration = int(stopped.group(1))
    assert done_before <= iteration < 48  # the iteration under way was finished: no work lost
    assert f"resuming baseline seed 0 from ckpt_{iteration:08d}.pt (iteration {iteration} of 48)" in logs[second]
    ours = torch.load(project / run_dir / "model_final.pt", weights_only=True)["model"]
    theirs = torch.load(reference / run_dir / "model_final.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# -- the paper's profile on real COCO images -----------------------------------------------------

COCO_SUBSET = {"train": 16, "val": 8, "test-dev": 6}  # images of tiny_coco's 50 + 50 the test runs on


def coco_layout(dest: Path) -> Path:
    """The first images of tiny_coco in COCO 2017's own layout (the image folders linked, the
    annotation files cut to those images' records), with a test-dev made of val images (COCO's
    image_info file lists images only, as the real one does)."""
    from conftest import TINY_COCO

    (dest / "annotations").mkdir(parents=True)
    for name in ("train2017", "val2017"):
        (dest / name).symlink_to(TINY_COCO / name)
    (dest / "test2017").symlink_to(TINY_COCO / "val2017")
    for split in ("train", "val"):
        full = json.loads((TINY_COCO / "annotations" / f"instances_{split}2017.json").read_text())
        images = full["images"][:COCO_SUBSET[split]]
        ids = {i["id"] for i in images}
        subset = {**full, "images": images, "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
        (dest / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(subset))
    val = json.loads((dest / "annotations" / "instances_val2017.json").read_text())
    info = {"info": val.get("info", {}), "images": val["images"][:COCO_SUBSET["test-dev"]],
            "categories": val["categories"]}
    (dest / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    return dest


@pytest.mark.slow
def test_the_coco_profile_runs_end_to_end_on_real_coco_images(tmp_path):
    root = coco_layout(tmp_path / "coco")
    shrunk = {  # the paper's recipe, shrunk to a CPU: sizes, widths, epochs
        "data": {"root": str(root), "num_workers": 0,
                 "input": {"train_min_size": [160], "test_min_size": 160, "max_size": 256}},
        "model": {"backbone": {"depth": 18, "pretrained": False, "trainable_layers": 5, "norm": "batch"},
                  "fpn_channels": 64, "head": {"convs": 1, "channels": 64}, "descriptor_dim": 64,
                  "purify": {"embed_dim": 64},
                  "levels": {"features": ["p3", "p4", "p5"], "grids": [24, 16, 8],
                             "scale_ranges": [[1, 48], [24, 96], [48, 2048]]}},
        "train": {"batch_size": 4, "epochs": 1, "lr_steps": [], "warmup_iters": 2, "checkpoint_every_iters": 4,
                  "amp": False, "device": "cpu"},
        "evaluate": {"bootstrap": {"resamples": 20}},
        "cluster": {job: {"gpus": 0, "cpus": 1, "mem_mb": 1000, "runtime_min": 10} for job in ("train", "evaluate")},
    }
    params = tiny_params(profile="coco")
    _deep_update(params["profiles"]["coco"], shrunk)
    project = copy_project(tmp_path / "project")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the chain of the variant that runs every module; the other variants' chains and the reports
    # are the same code at any profile, and run on the synthetic set (dvc_project)
    variant = "pep"
    proc = sh(BIN / "dvc", "repro", *(f"{stage}@{variant}" for stage in SCORING), cwd=project, timeout=1200)
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    assert ran == {"settings", "data", "validate@train", "validate@val",
                   f"train@{variant}-0", *(f"{stage}@{variant}" for stage in SCORING)}, ran
    assert "COCO found in place" in proc.stdout  # nothing downloaded: the folders are there
    manifest = json.loads((project / "data" / "coco" / "manifest.json").read_text())
    assert manifest["root"] == str(root) and manifest["annotations"]["val_annotations"]["md5"]
    mechanisms = json.loads((project / "metrics" / variant / "mechanisms.json").read_text())
    assert mechanisms["data"]["val"]["instances"] > 0
    val = json.loads((project / "metrics" / variant / "val.json").read_text())
    assert 0 <= val["AP"] <= 100 and val["split"] == "val"
    test_dev = json.loads((project / "metrics" / variant / "test-dev.json").read_text())
    assert "AP" not in test_dev and "COCO server" in test_dev["scored"]
    with zipfile.ZipFile(project / test_dev["submission"]) as z:
        (name,) = z.namelist()
        detections = json.loads(z.read(name))
    assert name == f"detections_test-dev2017_pep-{variant}_results.json"
    assert {d["image_id"] for d in detections} <= {i["id"] for i in json.loads(
        (root / "annotations" / "image_info_test-dev2017.json").read_text())["images"]}


def _deep_update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
