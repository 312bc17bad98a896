"""A real one-node SLURM cluster (tests/slurm_cluster.py) and the Snakemake `slurm` profile:
jobs go through sbatch, and a two-rule workflow runs as two SLURM batch jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import yaml

import slurm_cluster as harness
from slurm_cluster import SLURM_PROFILE, SlurmUnavailable, job_info, run_snakemake_on_slurm

pytest_plugins = ["slurm_cluster"]  # the session-wide `slurm_cluster` fixture

TOY_SNAKEFILE = """\
rule all:
    input: "b.txt"

rule a:
    output: "a.txt"
    resources: mem_mb=100
    shell: "echo $SLURM_JOB_ID > {{output}}"

rule b:
    input: "a.txt"
    output: "b.txt"
    threads: {threads}
    resources: mem_mb=100, runtime=5
    shell: "cat {{input}} > {{output}} && echo $SLURM_JOB_ID {{threads}} >> {{output}}"
"""


def wait_for_state(job_id: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
                   timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (info := job_info(job_id)).get("JobState") not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {info.get('JobState')}"
        time.sleep(0.3)
    return info


def minutes(limit: str) -> int:
    """SLURM's [D-]HH:MM:SS time limit in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = map(int, hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


@pytest.mark.slurm
def test_cluster_runs_srun_and_sbatch(slurm_cluster, tmp_path, record_property):
    record_property("slurm_install_s", round(slurm_cluster.install_s, 1))
    record_property("slurm_start_s", round(slurm_cluster.start_s, 2))
    print(f"SLURM install {slurm_cluster.install_s:.1f} s, "
          f"daemons up {slurm_cluster.start_s:.2f} s")
    assert "idle" in harness.node_states().values()
    srun = subprocess.run(["srun", "--time=1", "hostname"], capture_output=True, text=True,
                          timeout=60)
    assert srun.returncode == 0, srun.stderr
    assert srun.stdout.strip() == socket.gethostname()

    out = tmp_path / "job.out"
    sbatch = subprocess.run(["sbatch", "--parsable", "--time=1", "--mem=50", f"--output={out}",
                             "--wrap", "echo job=$SLURM_JOB_ID"],
                            capture_output=True, text=True, timeout=60)
    assert sbatch.returncode == 0, sbatch.stderr
    job_id = sbatch.stdout.strip().split(";")[0]
    info = wait_for_state(job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
    assert out.read_text().strip() == f"job={job_id}"


@pytest.mark.slurm
def test_snakemake_runs_rules_as_slurm_jobs_through_the_profile(slurm_cluster, tmp_path,
                                                                 record_property):
    threads = min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE.format(threads=threads))
    t0 = time.monotonic()
    run = run_snakemake_on_slurm(tmp_path, ["all"], timeout=180)
    record_property("toy_workflow_s", round(time.monotonic() - t0, 1))
    print(f"toy workflow on SLURM: {time.monotonic() - t0:.1f} s")
    log = run.process.stdout + run.process.stderr
    assert run.process.returncode == 0, log[-3000:]
    assert len(run.job_ids) == 2, log[-3000:]
    id_a, id_b = run.job_ids

    # Each rule's shell ran inside its own SLURM job, b after a ...
    assert (tmp_path / "a.txt").read_text().split() == [id_a]
    # ... and the rule saw all the CPUs it asked for (the job's snakemake did not scale it down)
    assert (tmp_path / "b.txt").read_text().split() == [id_a, id_b, str(threads)]
    assert int(id_a) < int(id_b)

    # The profile's defaults reached sbatch where the rule set nothing, the rule's own
    # resources where it did, and threads became --cpus-per-task.
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    a, b = job_info(id_a), job_info(id_b)
    for info in (a, b):
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
        assert info["Partition"] == slurm_cluster.partition
        assert info["MinMemoryNode"] == "100M"
    assert minutes(a["TimeLimit"]) == profile["default-resources"]["runtime"]
    assert minutes(b["TimeLimit"]) == 5
    assert int(b["NumCPUs"]) == threads

    # The job logs are kept where the plugin puts them, and say what ran.
    for rule, job_id in (("a", id_a), ("b", id_b)):
        logs = list((tmp_path / ".snakemake" / "slurm_logs").glob(f"rule_{rule}/**/{job_id}.log"))
        assert len(logs) == 1, f"no log for rule {rule} (job {job_id})"
        assert f"rule {rule}:" in logs[0].read_text()

    # A second run finds everything done and submits nothing.
    again = run_snakemake_on_slurm(tmp_path, ["all"], timeout=120)
    assert again.process.returncode == 0, (again.process.stdout + again.process.stderr)[-3000:]
    assert again.job_ids == []
    assert "Nothing to be done" in again.process.stdout + again.process.stderr


@pytest.mark.slurm
def test_a_failing_rule_fails_the_run_instead_of_hanging(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(
        'rule bad:\n    output: "bad.txt"\n    resources: mem_mb=100, runtime=5\n'
        '    shell: "echo boom-$SLURM_JOB_ID >&2; exit 3"\n')
    run = run_snakemake_on_slurm(tmp_path, ["bad.txt"], ["--retries", "0"], timeout=150)  # (the profile's 5)
    log = run.process.stdout + run.process.stderr
    assert run.process.returncode not in (0, 124, 137), log[-3000:]  # failed, not timed out
    assert len(run.job_ids) == 1, log[-3000:]
    assert job_info(run.job_ids[0])["JobState"] == "FAILED"
    assert f"boom-{run.job_ids[0]}" in log  # --show-failed-logs from the profile
    assert not (tmp_path / "bad.txt").exists()


def test_without_slurm_the_fixture_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PEP_CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not root"):
        harness.unavailable("not root")
    for var in ("CI", "PEP_CI"):
        monkeypatch.setenv(var, "1")
        with pytest.raises(pytest.fail.Exception, match="not root"):
            harness.unavailable("not root")
        monkeypatch.delenv(var)


def test_missing_packages_without_root_or_apt_are_reported(monkeypatch):
    monkeypatch.setattr(harness, "_missing_binaries", lambda: ["slurmctld"])
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmUnavailable, match=r"slurmctld.*not root"):
        harness.ensure_packages()
    monkeypatch.setattr(harness.os, "geteuid", lambda: 0)
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with pytest.raises(SlurmUnavailable, match="no apt-get"):
        harness.ensure_packages()


def test_user_profile_leaves_cluster_specific_choices_to_the_user():
    """The slurm profile must run on a real cluster unchanged: no forced squeue polling, no
    partition of ours, no cpus_per_task that would override threads and cpus_per_gpu."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "slurm-status-command" not in profile
    assert {"runtime", "mem_mb"} <= set(profile["default-resources"])
    assert not {"slurm_partition", "cpus_per_task"} & set(profile["default-resources"])
    default = yaml.safe_load((SLURM_PROFILE.parent / "default" / "config.yaml").read_text())
    assert default["cores"] == "all" and "executor" not in default
