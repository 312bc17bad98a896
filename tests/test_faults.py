"""Fault injection: every bad input and fault a user meets, through the real command line.

Each case runs `pep` as a user would and asserts what a user needs: a non-zero exit, one
`pep: error:` message that names the file, record or key and says what to do, no traceback,
an end within a minute, and no output left that looks complete when it is not. The last part
interrupts `pep evaluate` with SIGINT and SIGKILL at several points and checks that its outputs
are the previous run's, untouched, or a complete new set, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, BOUND_S, ENV, TINY_COCO, make_project, perfect_results, pep, refused, write
from pep.config import PROJECT_ROOT

TINY_VAL = TINY_COCO / "annotations" / "instances_val2017.json"
VARIANT = "baseline"
PARAMS = PROJECT_ROOT / "params.yaml"


# ------------------------------------------------------------------------------------ helpers

def ok(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = pep(*args, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def edited_params(params: Path, edit):
    """params.yaml changed by `edit(raw)` for the block, then restored byte for byte."""
    before = params.read_text()
    raw = yaml.safe_load(before)
    edit(raw)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        yield params
    finally:
        params.write_text(before)


def outputs_state(project: Path) -> dict[str, tuple]:
    """Every file of the evaluate stage's outputs: (inode, mtime, content hash)."""
    state = {}
    for folder in (project / "metrics" / VARIANT, project / "results" / VARIANT):
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file():
                st = path.stat()
                state[str(path.relative_to(project))] = (st.st_ino, st.st_mtime_ns, hash(path.read_bytes()))
    return state


# ----------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def project(tmp_path_factory, small_synth) -> Path:
    """A project on its own copy of the small synthetic set, with a 2-iteration baseline model
    for seeds 0 and 1, evaluated once. Tests that edit params.yaml restore it."""
    folder = tmp_path_factory.mktemp("faults")
    data = folder / "data-copy"
    shutil.copytree(small_synth, data)
    params = make_project(folder, data, seeds=[0, 1])
    raw = yaml.safe_load(params.read_text())
    raw["evaluate"]["bootstrap"]["resamples"] = 50
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for seed in (0, 1):
        ok("train", "--variant", VARIANT, "--seed", str(seed), "--max-iters", "2", "--no-tracking", cwd=folder)
    ok("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=folder)
    return folder


@pytest.fixture
def val_file(project):
    """The project's val annotation file, parsed; a test may rewrite it and it comes back."""
    path = project / "data-copy" / "annotations" / "instances_val2017.json"
    before = path.read_bytes()
    yield path
    path.write_bytes(before)


# ------------------------------------------------------ 1. a ground-truth RLE that misses its size

def _rle_off_by_seven(data: dict) -> dict:
    crowd = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    counts = crowd["segmentation"]["counts"]
    counts[counts.index(max(counts))] -= 7  # 7 pixels short of height x width
    return crowd


def test_eval_results_refuses_a_ground_truth_rle_that_would_hang_pycocotools(tmp_path):
    """Before: 10 minutes at full CPU inside computeIoU, SIGINT ignored."""
    data = read(TINY_VAL)
    bad = _rle_off_by_seven(data)
    gt = write(tmp_path / "gt.json", data)
    results = write(tmp_path / "results.json", perfect_results(data, {bad["image_id"]}))
    message = refused("eval-results", str(gt), str(results), cwd=tmp_path,
                      names=(str(gt), "bad_rle", f"(id {bad['id']})", "pep data validate"))
    assert "stop scoring" in message


def test_evaluate_checks_its_ground_truth_before_predicting(project, val_file):
    data = read(val_file)
    rle = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    rle["segmentation"] = {"size": rle["segmentation"]["size"], "counts": "ab"}  # truncated string
    write(val_file, data)
    before = outputs_state(project)
    message = refused("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project,
                      names=(str(val_file), "bad_rle", f"(id {rle['id']})"))
    assert "predicting" not in message
    assert outputs_state(project) == before


# --------------------------------------- 2. polygons too short for pycocotools: validated, scored

def test_short_polygons_pass_validate_and_every_later_stage(project, val_file, tmp_path):
    data = read(val_file)
    first = data["annotations"][0]
    data["annotations"] += [{**first, "id": 10**6, "iscrowd": 0, "segmentation": [[10, 10, 20]]},  # 3 numbers
                            {**first, "id": 10**6 + 1, "iscrowd": 0,
                             "segmentation": [[10, 10, 20, 20]]}]  # pycocotools would read a box
    write(val_file, data)
    proc = ok("data", "validate", "--split", "val", "-q", cwd=project)
    assert "OK: can be trained on" in proc.stdout and "degenerate_segmentation" in proc.stdout
    ok("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project)
    # scored as misses, not dropped: perfect detections of the others no longer reach full recall
    results = write(tmp_path / "perfect.json", perfect_results(read(TINY_VAL)))
    full = json.loads(ok("eval-results", str(TINY_VAL), str(results), cwd=tmp_path).stdout)
    tiny = read(TINY_VAL)
    tiny["annotations"].append({**tiny["annotations"][0], "id": 10**6, "iscrowd": 0,
                                "segmentation": [[10, 10, 20]], "area": 5000.0})
    gt = write(tmp_path / "gt.json", tiny)
    short = json.loads(ok("eval-results", str(gt), str(results), cwd=tmp_path).stdout)
    assert full["AR100"] == 100.0 and short["AR100"] < 100.0


# -------------------------------------------- 3. bad training data: one message, no worker trace

def _train_project(tmp_path: Path, small_synth: Path, workers: int) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(small_synth, data)
    params = make_project(tmp_path / "project", data)
    raw = yaml.safe_load(params.read_text())
    raw["data"]["num_workers"] = workers
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params.parent, data


def test_training_on_a_bad_rle_is_refused_before_it_starts(tmp_path, small_synth):
    project, data = _train_project(tmp_path, small_synth, 0)
    train_file = data / "annotations" / "instances_train2017.json"
    anns = read(train_file)
    rle = next(a for a in anns["annotations"] if isinstance(a["segmentation"], dict))
    rle["segmentation"]["counts"] = rle["segmentation"]["counts"][:-2]  # no longer covers its size
    write(train_file, anns)
    refused("train", "--variant", VARIANT, "--max-iters", "2", "--no-tracking", cwd=project,
            names=(str(train_file), "bad_rle", f"(id {rle['id']})", "stop training"))
    assert not (project / "runs" / VARIANT / "seed0" / "model_final.pt").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_image_met_in_a_loader_worker_is_one_message(tmp_path, small_synth, damage):
    project, data = _train_project(tmp_path, small_synth, 1)
    for image in (data / "train2017").iterdir():
        content = image.read_bytes()
        image.write_bytes(b"" if damage == "empty" else content[: len(content) // 3])
    message = refused("train", "--variant", VARIANT, "--max-iters", "2", "--no-tracking", cwd=project,
                      names=(str(data / "train2017"), "in DataLoader worker process"))
    assert "Original Traceback" not in message and "File \"" not in message
    assert not (project / "runs" / VARIANT / "seed0" / "model_final.pt").exists()
    # and the pipeline's validate stage, which opens every image in full, refuses it first
    proc = pep("data", "validate", "--split", "train", "-q", cwd=project)
    assert proc.returncode == 1 and "ERROR image_unreadable" in proc.stdout, proc.stdout


# ------------------------------------------------------- 4. a model that does not fit the settings

def test_a_model_of_other_settings_names_the_setting(project):
    with edited_params(project / "params.yaml", lambda raw: raw["model"].update(fpn_channels=96)):
        refused("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project,
                names=("model_final.pt", "model.fpn_channels: 64 when trained, 96 now", "retrain"))


@pytest.mark.parametrize("damage", ["no_category_ids", "truncated", "not_a_dict"])
def test_a_model_file_that_is_not_ours_or_damaged(project, damage):
    final = project / "runs" / VARIANT / "seed1" / "model_final.pt"
    before = final.read_bytes()
    try:
        if damage == "no_category_ids":
            state = torch.load(final, weights_only=True)
            torch.save({"model": state["model"]}, final)
            expected = "no 'category_ids'"
        elif damage == "truncated":
            final.write_bytes(before[: len(before) // 2])
            expected = "cannot be loaded"
        else:
            torch.save([1, 2, 3], final)
            expected = "not a model written by `pep train`"
        outputs = outputs_state(project)
        refused("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project,
                names=(str(final), expected, "pep train --variant baseline --seed 1"))
        assert outputs_state(project) == outputs  # refused before seed 0 was even predicted
    finally:
        final.write_bytes(before)


# ------------------------------------------------ 5. a labelling service's export of categories

def _labelling_service_export(data: dict) -> dict:
    """Its export: the project's name as an unused category 0, also the name of a real class."""
    project_name = data["categories"][0]["name"]
    data["categories"].insert(0, {"id": 0, "name": project_name, "supercategory": "none"})
    return data


def test_an_unused_category_repeating_a_name_is_left_out_everywhere(tmp_path, small_synth):
    project, data = _train_project(tmp_path, small_synth, 0)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        path = data / "annotations" / name
        write(path, _labelling_service_export(read(path)))
    proc = ok("data", "validate", "--split", "train", "-q", cwd=project)
    assert "WARNING unused_duplicate_category" in proc.stdout and "OK: can be trained on" in proc.stdout
    ok("train", "--variant", VARIANT, "--max-iters", "2", "--no-tracking", cwd=project)
    final = torch.load(project / "runs" / VARIANT / "seed0" / "model_final.pt", weights_only=True)
    real = [c["id"] for c in read(data / "annotations" / "instances_val2017.json")["categories"] if c["id"]]
    assert final["category_ids"] == sorted(real)
    ok("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project)
    per_category = read(project / "metrics" / VARIANT / "val_per_category.json")
    assert len(per_category) == len(real)  # the class's name once, with its own AP


def test_a_repeated_name_that_annotations_use_is_an_error_with_a_fix(tmp_path, small_synth):
    project, data = _train_project(tmp_path, small_synth, 0)
    path = data / "annotations" / "instances_train2017.json"
    anns = read(path)
    anns["categories"][1]["name"] = anns["categories"][0]["name"]
    write(path, anns)
    proc = pep("data", "validate", "--split", "train", "-q", cwd=project)
    assert proc.returncode == 1 and "ERROR duplicate_category_name" in proc.stdout
    assert "give each class one id" in proc.stdout
    refused("train", "--variant", VARIANT, "--max-iters", "2", "--no-tracking", cwd=project,
            names=(str(path), "duplicate_category_name", "fix: give each class one category id"))


# ------------------------------------------------------------- 6. outputs that cannot be written

def _as_nobody(folder: Path) -> tuple[tuple[str, ...], dict]:
    """Root writes anywhere: the command runs as `nobody`, which owns a copy of the project."""
    if os.geteuid() != 0:
        return (), ENV
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no user for whom a folder is read-only")
    subprocess.run(["chown", "-R", "nobody", str(folder)], check=True)
    temp = Path(tempfile.gettempdir())
    for parent in folder.parents:  # pytest's temporary folders are 0700
        if temp in parent.parents:
            os.chmod(parent, parent.stat().st_mode | 0o055)
    home = folder / "home"
    home.mkdir(exist_ok=True)
    shutil.chown(home, "nobody")
    return (("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
            {**ENV, "HOME": str(home), "MPLCONFIGDIR": str(home)})


def test_read_only_metrics_are_refused_before_any_work(project, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("ckpt_*"))
    raw = yaml.safe_load((copy / "params.yaml").read_text())
    raw["data"]["root"] = str(copy / "data-copy")
    (copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prefix, env = _as_nobody(copy)
    metrics = copy / "metrics" / VARIANT
    metrics.chmod(0o555)
    before = outputs_state(copy)
    message = refused("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=copy, env=env,
                      prefix=prefix, names=(str(metrics), "cannot write", "permissions"))
    assert "predicting" not in message
    assert outputs_state(copy) == before  # results_val.json untouched
    (copy / "reports").mkdir(exist_ok=True)
    (copy / "reports").chmod(0o555)
    refused("tables", cwd=copy, env=env, prefix=prefix, names=(str(copy / "reports"), "cannot write"))
    refused("figures", cwd=copy, env=env, prefix=prefix, names=(str(copy / "reports"), "cannot write"))
    (copy / "runs" / VARIANT).chmod(0o555)
    refused("train", "--variant", VARIANT, "--seed", "5", "--max-iters", "1", "--no-tracking", cwd=copy,
            env=env, prefix=prefix, names=(str(copy / "runs" / VARIANT), "cannot write"))


# ------------------------------------------------------------------------- 8. the small ones

def test_a_key_given_twice_in_params_names_both_lines(tmp_path):
    params = tmp_path / "params.yaml"
    text = PARAMS.read_text().splitlines()
    lr = next(i for i, line in enumerate(text) if line.strip().startswith("lr:"))
    text.insert(lr + 1, text[lr])
    params.write_text("\n".join(text) + "\n")
    refused("params", "--params", str(params), cwd=tmp_path,
            names=(str(params), f"line {lr + 2}", f"first on line {lr + 1}", "'lr'", "given twice"))


def test_a_refused_connection_is_named_at_once(tmp_path):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    message = refused("data", "coco", "--params", str(PARAMS), "--profile", "coco",
                      "--out", str(tmp_path / "coco"), "--files", "annotations/annotations_trainval2017.zip",
                      "--mirror", f"http://127.0.0.1:{port}", cwd=tmp_path,
                      names=(f"127.0.0.1:{port}", "connection refused", "--mirror"))
    assert time.monotonic() - started < 15  # no 31 s of retries
    assert "resume" not in message


def test_a_missing_file_mirror_names_the_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    message = refused("data", "coco", "--params", str(PARAMS), "--profile", "coco",
                      "--out", str(tmp_path / "coco"), "--files", "annotations/annotations_trainval2017.zip",
                      "--mirror", mirror.as_uri(), cwd=tmp_path,
                      names=(str(mirror / "annotations" / "annotations_trainval2017.zip"), "does not exist"))
    assert "cannot connect" not in message


def test_other_input_files_are_named(project, tmp_path):
    """The rest of the input kinds: an annotation file that is not JSON, a results file of
    the wrong shape, an expected-results file with a key twice."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    refused("eval-results", str(broken), str(broken), cwd=tmp_path, names=(str(broken), "not valid JSON"))
    results = write(tmp_path / "results.json", {"not": "a list"})
    refused("eval-results", str(TINY_VAL), str(results), cwd=tmp_path, names=(str(results), "JSON list"))
    expected = tmp_path / "expected.yaml"
    expected.write_text("default:\n  baseline:\n    AP: 1\n    AP: 2\n")
    refused("check-results", "--expected", str(expected), cwd=project,
            names=(str(expected), "line 4", "first on line 3"))


# ------------------------------------------------- 7. interrupted evaluation: one run or the other

def _default_sigint() -> None:
    """In the child: Ctrl-C's default action. A shell without job control starts background
    jobs (a CI runner's) with SIGINT ignored, and that would pass to `pep`, which then could
    not be interrupted at all; a user's terminal gives the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_until(project: Path, marker: str, sig: int) -> tuple[int, str]:
    """Start `pep evaluate`, send `sig` once stderr shows `marker`; its exit status and stderr."""
    proc = subprocess.Popen([str(BIN / "pep"), "evaluate", "--variant", VARIANT, "--no-tracking", "-q"],
                            cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    seen = []
    deadline = time.monotonic() + BOUND_S
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(seen)
    seen += proc.stderr.readlines()
    return proc.wait(timeout=BOUND_S), "".join(seen)


@pytest.mark.slow
def test_an_interrupted_evaluation_leaves_the_previous_outputs(project):
    """SIGINT and SIGKILL before, between and after the scoring of two seeds' models."""
    points = ["seed 0: predicting", "seed 0: 50 bootstrap", "seed 1: mask AP"]
    for sig in (signal.SIGINT, signal.SIGKILL):
        for point in points:
            before = outputs_state(project)
            assert "metrics/baseline/val.json" in before
            rc, stderr = _run_until(project, point, sig)
            assert rc == (130 if sig == signal.SIGINT else -signal.SIGKILL), f"{sig!r} at {point}\n{stderr}"
            assert "Traceback" not in stderr, stderr
            assert outputs_state(project) == before, f"outputs changed after {sig!r} at {point!r}"
            if sig == signal.SIGINT:
                assert "pep: interrupted" in stderr
                staged = [p for p in project.rglob(".*pep-staged-*")]
                assert staged == [], staged  # cleaned up on the way out
    # the next run publishes one consistent set and sweeps what a SIGKILL may have left
    ok("evaluate", "--variant", VARIANT, "--no-tracking", "-q", cwd=project)
    assert [p for p in project.rglob(".*pep-staged-*")] == []
    metrics = read(project / "metrics" / VARIANT / "val.json")
    gt = project / "data-copy" / "annotations" / "instances_val2017.json"
    for seed in ("0", "1"):
        results = project / "results" / VARIANT / f"seed{seed}" / "results_val.json"
        scored = json.loads(ok("eval-results", str(gt), str(results), cwd=project).stdout)
        assert scored["AP"] == metrics["per_seed"][seed]["AP"]  # the files belong together


def test_stages_staging_in_one_folder_at_once_keep_each_others_files(tmp_path):
    """Two validate jobs publish into reports/data/ at the same time (Snakemake runs them side by
    side): the second one's sweep of SIGKILL leftovers must not take the first one's staged file."""
    from pep.jsonfile import StagedOutputs

    first = StagedOutputs([tmp_path / "validate_val.json"], "first")
    first.write_json(tmp_path / "validate_val.json", {"split": "val"})
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".validate_train.json.pep-staged-{dead.pid}"  # a killed run's
    leftover.write_text("{}")
    second = StagedOutputs([tmp_path / "validate_train.json"], "second")
    assert not leftover.exists()
    second.write_json(tmp_path / "validate_train.json", {"split": "train"})
    first.publish()
    second.publish()
    assert read(tmp_path / "validate_val.json") == {"split": "val"}
    assert read(tmp_path / "validate_train.json") == {"split": "train"}
