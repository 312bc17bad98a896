"""Training that survives: determinism, SIGKILL and resume, damaged checkpoints, two gloo
processes equal to one, evaluation and the test-dev submission from what training wrote."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, ENV, make_project

from pep.config import load_params
from pep.engine import checkpoint
from pep.engine.preemption import RESUME_EXIT_CODE
from pep.engine.train import train
from pep.model import build_model

def pep_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "pep"), *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def weights(params: Path, variant: str = "pep", seed: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(params.parent / "runs" / variant / f"seed{seed}" / "model_final.pt",
                      weights_only=True)["model"]


def losses(params: Path, variant: str = "pep", seed: int = 0) -> list[dict]:
    lines = (params.parent / "runs" / variant / f"seed{seed}" / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "images_per_s"} for l in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_synth) -> Path:
    """An uninterrupted 12-iteration run of `pep`, the yardstick of the tests below."""
    params = make_project(tmp_path_factory.mktemp("reference"), small_synth)
    pep_cmd("train", "--params", str(params), "--variant", "pep", "--max-iters", "12", cwd=params.parent)
    return params


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, small_synth, reference):
    params = make_project(tmp_path / "killed", small_synth)
    cmd = [str(BIN / "pep"), "train", "--params", str(params), "--variant", "pep", "--max-iters", "12",
           "--no-tracking"]
    proc = subprocess.Popen(cmd, cwd=params.parent, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = params.parent / "runs/pep/seed0" / "ckpt_00000008.pt"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (params.parent / "runs/pep/seed0/model_final.pt").exists()

    rerun = subprocess.run(cmd, cwd=params.parent, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming pep seed 0 from ckpt_0000000" in rerun.stderr
    mine, theirs = weights(params), weights(reference)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), "resumed weights differ"
    assert losses(params) == losses(reference)

    for p in (params, reference):
        pep_cmd("evaluate", "--params", str(p), "--variant", "pep", "--no-tracking", "-q", cwd=p.parent)
    ours = json.loads((params.parent / "metrics/pep/val.json").read_text())
    ref = json.loads((reference.parent / "metrics/pep/val.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "bbox"):
        assert ours[key] == ref[key], key


def test_damaged_checkpoint_is_reported_and_skipped(tmp_path, small_synth, caplog):
    params = make_project(tmp_path, small_synth)
    cfg = load_params(params)
    run = tmp_path / "runs/baseline/seed0"
    train(cfg, "baseline", 0, max_iters=8)
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["ckpt_00000008.pt", "ckpt_00000004.pt"]
    newest = run / "ckpt_00000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn file
    with caplog.at_level(logging.WARNING, logger="pep.engine.checkpoint"):
        summary = train(cfg, "baseline", 0, max_iters=8)
    assert summary["resumed_from"] == 4
    assert "ckpt_00000008.pt is damaged and is skipped" in caplog.text
    state = torch.load(run / "ckpt_00000008.pt", weights_only=True)  # rewritten, whole again
    assert state["iteration"] == 8


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, small_synth):
    a = make_project(tmp_path / "a", small_synth)
    b = make_project(tmp_path / "b", small_synth)
    for p in (a, b):
        train(load_params(p), "baseline", 0, max_iters=3)
    train(load_params(a), "baseline", 1, max_iters=3)
    wa, wb, wc = weights(a, "baseline"), weights(b, "baseline"), weights(a, "baseline", seed=1)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())


def _stopped_by_signal(cmd: list[str], cwd: Path, sig: int, after: Path,
                       group: bool = False) -> tuple[subprocess.Popen, str]:
    """Run `cmd` until the file `after` exists, then send it `sig` (with `group`, to every process
    it started as well, as slurmstepd signals a job's processes); the process and its stderr."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)
    deadline = time.monotonic() + 300
    while not after.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after.exists() and proc.poll() is None, proc.communicate()[1] if proc.poll() is not None else "too slow"
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    return proc, stderr


STOPPED = re.compile(r"stopped by (SIG\w+) after iteration (\d+) of (\d+); its checkpoint is (\S+): "
                     r"the same command resumes it")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_stop_signal_ends_the_iteration_checkpoints_and_the_rerun_equals_an_uninterrupted_run(
        tmp_path, small_synth, reference, sig):
    """The scheduler's warning (sbatch --signal) or SIGTERM: the iteration under way is finished,
    one checkpoint written at it, exit status 75; the rerun resumes there and ends bit for bit
    where an uninterrupted run does. Checkpoints fall every 4 iterations: the signal's lands
    between them. SIGTERM goes to the whole process group, two data loader workers included, as
    SLURM sends it: the workers outlive it, and the loop's own shutdown of them still works."""
    workers = 2 if sig == signal.SIGTERM else 0
    params = make_project(tmp_path / "stopped", small_synth)
    raw = yaml.safe_load(params.read_text())
    raw["data"]["num_workers"] = workers  # the samples are seeded per index: the same data as with none
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = params.parent / "runs/pep/seed0"
    cmd = [str(BIN / "pep"), "train", "--params", str(params), "--variant", "pep", "--max-iters", "12"]
    proc, stderr = _stopped_by_signal(cmd, params.parent, sig, after=run / "ckpt_00000004.pt", group=bool(workers))
    assert proc.returncode == RESUME_EXIT_CODE == 75, stderr
    assert "Traceback" not in stderr and "pep: error" not in stderr, stderr
    (found,) = STOPPED.findall(stderr)
    name, iteration, total, path = found[0], int(found[1]), int(found[2]), Path(found[3])
    assert name == sig.name and total == 12 and 4 <= iteration < 12, stderr
    # lost work: none; the checkpoint is the last iteration done, and the log ends there too
    assert path == run / f"ckpt_{iteration:08d}.pt" and checkpoint.list_checkpoints(run)[0] == path
    assert checkpoint.load(path)["iteration"] == iteration
    assert [r["iteration"] for r in losses(params)][-1] <= iteration
    assert not (run / "model_final.pt").exists()
    mlflow_run = _train_runs(params)
    assert [(r.info.status, r.data.tags["stage_train"]) for r in mlflow_run] == [("KILLED", "killed")]

    rerun = subprocess.run(cmd, cwd=params.parent, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming pep seed 0 from {path.name} (iteration {iteration} of 12)" in rerun.stderr
    mine, theirs = weights(params), weights(reference)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), "resumed weights differ"
    assert losses(params) == losses(reference)
    # the rerun carried on the same MLflow run, now finished
    assert [(r.info.run_id, r.info.status) for r in _train_runs(params)] == [(mlflow_run[0].info.run_id, "FINISHED")]


def _train_runs(params: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{params.parent / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("pep").experiment_id])


@pytest.mark.slow
def test_a_stop_signal_to_the_launcher_stops_every_process_at_one_iteration(tmp_path, small_synth):
    """`pep train` with two processes (it starts torchrun itself): SIGTERM to the launcher alone
    reaches both workers, which stop after the same iteration, rank 0 checkpointing it; the
    launcher exits 75, and the rerun resumes there and finishes."""
    params = make_project(tmp_path / "two", small_synth, processes=2, device="cpu", checkpoint_every_iters=100)
    run = params.parent / "runs/baseline/seed0"
    cmd = [str(BIN / "pep"), "train", "--params", str(params), "--variant", "baseline", "--max-iters", "12",
           "--no-tracking"]
    proc, stderr = _stopped_by_signal(cmd, params.parent, signal.SIGTERM, after=run / checkpoint.LOG)
    assert proc.returncode == 75, stderr
    stops = STOPPED.findall(stderr)
    assert len(stops) == 2 and len({s[1] for s in stops}) == 1, stderr  # each rank, the same iteration
    iteration = int(stops[0][1])
    assert [p.name for p in checkpoint.list_checkpoints(run)] == [f"ckpt_{iteration:08d}.pt"]
    # the one traceback is torchrun's own report of workers that exited non-zero (75)
    assert stderr.count("Traceback") == 1 and "exitcode  : 75" in stderr, stderr
    assert "the training processes stopped on SIGTERM; the same command resumes them" in stderr
    rerun = subprocess.run(cmd, cwd=params.parent, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"(iteration {iteration} of 12)" in rerun.stderr and (run / "model_final.pt").exists()


@pytest.mark.slow
def test_two_gloo_processes_train_the_model_of_one_process(tmp_path, small_synth):
    """torchrun, 2 processes x 2 images = 1 process x 4 images. Two things are pinned so that
    the comparison is exact: the backbone's BatchNorm is frozen (trainable BatchNorm would see
    per-process batch statistics on the CPU; GPUs get SyncBatchNorm), and every batch is padded
    to one size (the semantic grids span the padded batch, so a batch of 2 padded less than a
    batch of 4 would be another input). Everything else is per image or normalised over all
    processes."""
    one = make_project(tmp_path / "one", small_synth)
    two = make_project(tmp_path / "two", small_synth)
    for p in (one, two):
        raw = yaml.safe_load(p.read_text())
        raw["model"]["backbone"]["norm"] = "frozen_batch"
        raw["data"]["input"]["size_divisibility"] = 128  # shorter side 96, longer <= 128
        # SGD: Adam divides by the gradient's own scale, which magnifies float rounding in
        # near-zero gradients into visible weight differences
        raw["train"].update(optimizer="sgd", lr=0.02, amp=False)  # bf16 would round away 1e-5
        p.write_text(yaml.safe_dump(raw, sort_keys=False))
    common = ["train", "--variant", "pep", "--max-iters", "4", "--no-tracking"]
    pep_cmd(*common, "--params", str(one), cwd=one.parent)
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "pep.cli",
                           *common, "--params", str(two)], cwd=two.parent, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    l1, l2 = losses(one), losses(two)
    assert [r["iteration"] for r in l1] == [r["iteration"] for r in l2] == [2, 4]
    # Float32 sums in another order differ by ~1e-7 after one update (iteration 2 here) and the
    # updates amplify it: up to 2.6e-5 (loss_pur) after three, measured. A normalisation missing
    # its all-reduce would be off by tens of percent.
    for r1, r2 in zip(l1, l2):
        for key in ("loss", "loss_sem", "loss_exc", "loss_exc_cls", "loss_pur", "loss_mask"):
            assert r1[key] == pytest.approx(r2[key], rel=1e-6 if r1["iteration"] == 2 else 1e-4), key
    # The updates agree up to float rounding. Not bit for bit: a batch of 2 and a batch of 4 take
    # different conv kernels, and near-tied scores (top-k negatives, false peaks) can then pick
    # other cells; so compare the whole update, relative to its size.
    w1, w2 = weights(one), weights(two)
    torch.manual_seed(0)
    w0 = build_model(load_params(one), "pep", [1, 3, 5, 7]).state_dict()
    floats = [k for k in w1 if w1[k].is_floating_point()]
    update = sum(((w1[k] - w0[k]).double() ** 2).sum() for k in floats).sqrt().item()
    apart = sum(((w1[k] - w2[k]).double() ** 2).sum() for k in floats).sqrt().item()
    print(f"DDP vs one process: |update| {update:.3e}, |difference| {apart:.3e}")
    assert update > 0.1 and apart < 1e-2 * update, (apart, update)  # measured: 1.4e-3 of it


@pytest.mark.slow
def test_evaluate_predict_and_tracking_after_training(reference):
    folder = reference.parent
    pep_cmd("evaluate", "--params", str(reference), "--variant", "pep", "-q", cwd=folder)
    metrics = json.loads((folder / "metrics/pep/val.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert isinstance(metrics[key], (int, float)) and (metrics[key] == -1 or 0 <= metrics[key] <= 100)
    assert set(metrics["bbox"]) >= {"AP", "AP50"} and metrics["params"] > 0 and metrics["flops_per_image"] > 0
    assert (folder / "metrics/pep/val_per_category.json").exists()
    results = json.loads((folder / "results/pep/seed0/results_val.json").read_text())
    assert all("bbox" not in r and isinstance(r["segmentation"]["counts"], str) for r in results)

    out = pep_cmd("predict", "--params", str(reference), "--variant", "pep", "-q", cwd=folder).stdout
    zip_path = folder / "submissions/pep/detections_test-dev2017_pep-pep_results.zip"
    assert zip_path.exists() and "scored locally" in out
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == ["detections_test-dev2017_pep-pep_results.json"]
    assert "AP" in json.loads((folder / "metrics/pep/test-dev.json").read_text())

    # one MLflow run holds training and evaluation
    compared = pep_cmd("compare", "--params", str(reference), cwd=folder).stdout
    assert "pep" in compared
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pep").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["variant"] == "pep" and run.data.tags["seed"] == "0"
    assert "AP" in run.data.metrics and "loss" in run.data.metrics
    assert run.data.params["train.batch_size"] == "4"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6  # every 2nd of 12 iterations


def test_untrained_model_scores_zero_rather_than_crashing(tmp_path, small_synth):
    params = make_project(tmp_path, small_synth)
    cfg = load_params(params)
    train(cfg, "baseline", 0, max_iters=1)
    from pep.engine.evaluate import evaluate_variant

    metrics = evaluate_variant(cfg, "baseline", [0], progress=False)
    assert 0 <= metrics["AP"] < 1


@pytest.mark.slow
def test_pep_train_starts_torchrun_itself_for_several_processes(tmp_path, small_synth):
    """train.processes > 1 (on GPUs `auto` = one per visible GPU): the plain `pep train` command
    that dvc and Snakemake run relaunches itself under torchrun, here with two gloo processes."""
    params = make_project(tmp_path / "two", small_synth, processes=2, device="cpu")
    proc = pep_cmd("train", "--params", str(params), "--variant", "baseline", "--max-iters", "2",
                   "--no-tracking", cwd=params.parent)
    log = proc.stdout + proc.stderr
    assert "launching 2 training processes" in log and "torch.distributed.run" in log
    assert "on cpu x2" in log  # rank 0 of a world of two
    assert (params.parent / "runs" / "baseline" / "seed0" / "model_final.pt").exists()


@pytest.mark.slow
def test_pep_learns_on_the_synthetic_set(tmp_path, default_params):
    """One epoch of the default profile's `pep` over the default set's 600 training images (75
    iterations), scored on 30 val images of the same generator, against 0.0 for the untrained
    model. The bar (AP50 >= 2, AP >= 0.5) was set at about half of what the first, harder set
    of small objects gave after 2,400 images (AP 0.9, AP50 3.5). Measured on 2026-12-07 (one
    thread, 110 s of training): AP 7.3, AP50 26.6; after 240 images AP 1.0, AP50 4.7, too close
    to the bar; after 1,200 (this test's former length) AP 9.8, AP50 27.9. It is far above
    chance; the demo's accuracy belongs to the pipeline's measurement."""
    from pep.data.synth import generate
    from pep.engine.evaluate import evaluate_variant

    synth = {**default_params["data"]["synth"], "num_val": 30, "num_test_dev": 0}
    generate(synth, tmp_path / "synth", progress=False)
    params = make_project(tmp_path / "project", tmp_path / "synth")
    raw = yaml.safe_load(params.read_text())
    raw["data"]["input"] = default_params["data"]["input"]  # the default profile's sizes
    raw["data"]["num_workers"] = 2
    raw["train"] = {**default_params["train"], "epochs": 1}
    raw["model"] = default_params["model"]
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_params(params)
    summary = train(cfg, "pep", 0)
    assert summary["images_seen"] == 600
    metrics = evaluate_variant(cfg, "pep", [0], progress=False)
    print(f"pep after 600 images: AP {metrics['AP']:.1f}, AP50 {metrics['AP50']:.1f}")
    assert metrics["AP50"] >= 2.0 and metrics["AP"] >= 0.5, metrics


def test_a_smoke_run_never_replaces_a_trained_model(tmp_path, small_synth):
    params = make_project(tmp_path, small_synth, epochs=1)  # 24 images / 4: 6 iterations in all
    pep_cmd("train", "--params", str(params), "--variant", "baseline", "--no-tracking", cwd=tmp_path)
    final = tmp_path / "runs/baseline/seed0/model_final.pt"
    before = final.read_bytes()
    proc = subprocess.run([str(BIN / "pep"), "train", "--params", str(params), "--variant", "baseline",
                           "--max-iters", "2", "--no-tracking"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # a PepError's status
    assert f"{final} is a fully trained model (6 iterations)" in proc.stderr
    assert final.read_bytes() == before
    # a smoke run over a smoke run's model, or as long as the schedule, goes ahead
    pep_cmd("train", "--params", str(params), "--variant", "baseline", "--max-iters", "6", "--no-tracking",
            cwd=tmp_path)
