"""How `pep train` starts its workers: torchrun on one node, or in a SLURM allocation of several
nodes one torchrun per node through srun, meeting by c10d rendezvous on the first node.

The plan is checked from given environments (a fake `scontrol` stands in for SLURM's). What runs
for real: the srun + c10d path through `pep train` on the CPU with a stand-in `srun` that runs
its command on this machine, and, on the one-node SLURM cluster of tests/slurm_cluster.py, the
same path inside an sbatch job with PEP_LAUNCH=srun. Neither can show several nodes meeting.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, ENV, make_project

from pep import distributed
from pep.distributed import launch_plan
from pep.errors import PepError

pytest_plugins = ["slurm_cluster"]  # the session-wide `slurm_cluster` fixture

ARGV = ["train", "--params", "p.yaml", "--variant", "pep"]
PY = "/opt/py/bin/python"


def fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return folder


@pytest.fixture
def fake_scontrol(tmp_path) -> Path:
    """A folder with an `scontrol` that expands node[1-2] as SLURM would and logs its call."""
    calls = tmp_path / "scontrol_calls"
    return fake_tool(tmp_path / "bin", "scontrol",
                     f'echo "$@" >> {calls}\n'
                     '[ "$1 $2 $3" = "show hostnames node[1-2]" ] || { echo "bad call: $*" >&2; exit 1; }\n'
                     'printf "node1\\nnode2\\n"')


def slurm_env(path: Path, nodes: int, nodelist: str, job_id: str = "123456", **more) -> dict:
    return {"PATH": str(path), "SLURM_JOB_ID": job_id, "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": nodelist, **more}


def standalone(processes: int) -> tuple[str, ...]:
    return (PY, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "pep.cli", *ARGV)


def test_without_slurm_torchrun_runs_standalone_on_this_node():
    plan = launch_plan(2, ARGV, {"PATH": "/usr/bin"}, python=PY)
    assert plan.mode == "standalone" and (plan.nodes, plan.processes_per_node) == (1, 2)
    assert plan.command == plan.torchrun == standalone(2)
    assert launch_plan(1, ARGV, {"PATH": "/usr/bin"}, python=PY) is None  # trains in-process
    # the command of before, unchanged
    assert list(plan.command) == distributed.torchrun_command(2, ARGV, PY)


@pytest.mark.parametrize("count_var", ["SLURM_NNODES", "SLURM_JOB_NUM_NODES"])
def test_a_one_node_slurm_allocation_is_unchanged(tmp_path, count_var):
    env = {"PATH": str(tmp_path), "SLURM_JOB_ID": "77", count_var: "1", "SLURM_JOB_NODELIST": "gpu07"}
    plan = launch_plan(4, ARGV, env, python=PY)
    assert plan.mode == "standalone" and plan.command == standalone(4)
    assert launch_plan(1, ARGV, env, python=PY) is None


def test_two_nodes_launch_one_torchrun_per_node_through_srun(fake_scontrol, tmp_path):
    plan = launch_plan(4, ARGV, slurm_env(fake_scontrol, 2, "node[1-2]"), python=PY)
    torchrun = (PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4",
                "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29956", "--rdzv-id=123456",
                "-m", "pep.cli", *ARGV)
    assert plan.mode == "srun" and (plan.nodes, plan.processes_per_node, plan.processes) == (2, 4, 8)
    assert plan.torchrun == torchrun
    assert plan.command == ("srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                            "--kill-on-bad-exit=1", *torchrun)
    assert (tmp_path / "scontrol_calls").read_text() == "show hostnames node[1-2]\n"
    # one process per node (a CPU or one GPU each) still needs the launch
    one_each = launch_plan(1, ARGV, slurm_env(fake_scontrol, 2, "node[1-2]"), python=PY)
    assert one_each.mode == "srun" and "--nproc-per-node=1" in one_each.command
    # SLURM_JOB_NUM_NODES alone (SLURM_NNODES unset) counts the same
    env = slurm_env(fake_scontrol, 2, "node[1-2]")
    del env["SLURM_NNODES"]
    assert launch_plan(4, ARGV, env, python=PY).command == plan.command


def test_inside_a_step_the_job_counts_and_srun_overlaps(fake_scontrol):
    """`srun -n1 pep train`, or a rule of Snakemake's SLURM executor, which runs it in such a
    step after removing SLURM_JOB_NUM_NODES and most other SLURM_* variables: the step's
    SLURM_NNODES is 1, the job's node list has two nodes."""
    env = {"PATH": str(fake_scontrol), "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node[1-2]"}
    plan = launch_plan(4, ARGV, env, python=PY)
    assert (plan.mode, plan.nodes) == ("srun", 2)
    assert plan.command[:6] == ("srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                                "--overlap", "--kill-on-bad-exit=1")
    assert "--rdzv-endpoint=node1:29956" in plan.torchrun
    # the job's own count, where it is there, is taken as it is (the list is not counted)
    env.update(SLURM_JOB_NUM_NODES="3")
    assert launch_plan(4, ARGV, env, python=PY).nodes == 3
    # a step of a one-node job: a plain host name, no scontrol needed, torchrun as before
    one = {"PATH": "/nonexistent", "SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "gpu07"}
    assert launch_plan(4, ARGV, one, python=PY).command == standalone(4)


def test_cpus_per_task_of_the_job_reach_the_srun_task(fake_scontrol):
    env = slurm_env(fake_scontrol, 2, "node[1-2]", SLURM_CPUS_PER_TASK="16")
    command = launch_plan(4, ARGV, env, python=PY).command
    assert command[:6] == ("srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                           "--cpus-per-task=16", "--kill-on-bad-exit=1")


def test_master_port_is_honoured(fake_scontrol):
    env = slurm_env(fake_scontrol, 2, "node[1-2]", MASTER_PORT="41234")
    assert "--rdzv-endpoint=node1:41234" in launch_plan(2, ARGV, env, python=PY).torchrun
    # without it: 29500 + job id mod 1000
    assert distributed.rendezvous_port({"SLURM_JOB_ID": "1999"}) == 30499
    assert distributed.rendezvous_port({}) == 29500
    with pytest.raises(PepError, match="MASTER_PORT is 'abc'"):
        launch_plan(2, ARGV, {**env, "MASTER_PORT": "abc"}, python=PY)


def test_missing_scontrol_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PepError, match=r"SLURM_JOB_NODELIST=node\[1-2\].*`scontrol`.*not on PATH"):
        launch_plan(2, ARGV, slurm_env(empty, 2, "node[1-2]"), python=PY)
    # a plain host name needs no expanding
    plan = launch_plan(2, ARGV, slurm_env(empty, 2, "bignode"), python=PY)
    assert "--rdzv-endpoint=bignode:29956" in plan.torchrun


def test_a_failing_scontrol_is_reported(tmp_path):
    path = fake_tool(tmp_path / "bin", "scontrol", 'echo "scontrol: error: bad list" >&2; exit 1')
    with pytest.raises(PepError, match="exited 1: scontrol: error: bad list"):
        launch_plan(2, ARGV, slurm_env(path, 2, "node[1-"), python=PY)


def test_pep_launch_forces_or_refuses_the_multi_node_path(tmp_path):
    one_node = slurm_env(tmp_path, 1, "localhost", job_id="42", PEP_LAUNCH="srun")
    plan = launch_plan(2, ARGV, one_node, python=PY)
    assert plan.mode == "srun" and plan.command == (
        "srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        PY, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:29542", "--rdzv-id=42",
        "-m", "pep.cli", *ARGV)
    assert launch_plan(1, ARGV, one_node, python=PY).mode == "srun"
    # standalone: this node only, even in an allocation of several
    several = slurm_env(tmp_path, 3, "node[1-3]", PEP_LAUNCH="standalone")
    assert launch_plan(2, ARGV, several, python=PY).command == standalone(2)
    with pytest.raises(PepError, match="PEP_LAUNCH=srun needs a SLURM allocation"):
        launch_plan(2, ARGV, {"PATH": str(tmp_path), "PEP_LAUNCH": "srun"}, python=PY)
    with pytest.raises(PepError, match="PEP_LAUNCH is 'mpirun'"):
        launch_plan(2, ARGV, {"PEP_LAUNCH": "mpirun"}, python=PY)
    with pytest.raises(PepError, match="SLURM_JOB_NUM_NODES is 'two'"):
        launch_plan(2, ARGV, {"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "two"}, python=PY)


def test_launch_logs_the_command_and_returns_its_status(caplog):
    command = (sys.executable, "-c", "raise SystemExit(3)")
    plan = distributed.LaunchPlan("srun", 2, 4, command, command)
    with caplog.at_level(logging.INFO, logger="pep"):
        assert distributed.launch(plan) == 3
    assert "launching 8 training processes (2 nodes x 4, srun + c10d rendezvous): " in caplog.text
    assert f"{sys.executable} -c 'raise SystemExit(3)'" in caplog.text
    missing = distributed.LaunchPlan("srun", 2, 4, ("no-such-srun-here",), ())
    with pytest.raises(PepError, match="no-such-srun-here not found .SLURM's srun"):
        distributed.launch(missing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_project(folder: Path, small_synth: Path) -> Path:
    return make_project(folder, small_synth, processes=2, device="cpu")


@pytest.mark.slow
def test_srun_c10d_path_trains_on_the_cpu_with_a_stand_in_srun(tmp_path, small_synth):
    """`pep train` in a (pretend) one-node allocation with PEP_LAUNCH=srun: a stand-in `srun`
    records its arguments and runs the plan's torchrun part here, which meets by c10d on
    127.0.0.1 (a stand-in `scontrol` expands the node list to it) and trains two gloo workers."""
    params = two_process_project(tmp_path / "proj", small_synth)
    args_file = tmp_path / "srun_args"
    bin_dir = fake_tool(tmp_path / "bin", "scontrol", 'echo 127.0.0.1')
    fake_tool(bin_dir, "srun", f'printf "%s\\n" "$@" > {args_file}\n'
              'while [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done\nexec "$@"')
    port = free_port()
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "PEP_LAUNCH": "srun",
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "cpu[0]",
           "MASTER_PORT": str(port)}
    argv = ["train", "--params", str(params), "--variant", "baseline", "--max-iters", "2", "--no-tracking"]
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "pep"), *argv], check=False, cwd=params.parent, env=env,
                          capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    launched = next(line for line in log.splitlines() if "launching" in line)
    print(f"{seconds:.1f} s; {launched}")
    expected = launch_plan(2, argv, env)
    assert expected.command[:5] == ("srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1",
                                    "--kill-on-bad-exit=1")
    assert f"--rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:{port} --rdzv-id=4242" in launched
    assert "launching 2 training processes (1 node x 2, srun + c10d rendezvous): srun --nodes=1" in launched
    assert args_file.read_text().splitlines() == list(expected.command[1:])
    assert "on cpu x2" in log  # rank 0 of a world of two
    assert (params.parent / "runs" / "baseline" / "seed0" / "model_final.pt").exists()
    assert seconds < 90


def wait_for_job(job_id: str, timeout: float) -> dict[str, str]:
    from slurm_cluster import job_info

    deadline = time.monotonic() + timeout
    while (info := job_info(job_id)).get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED",
                                                             "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False, capture_output=True, timeout=30)
            pytest.fail(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s")
        time.sleep(0.5)
    return info


# The batch script of a job, and one task of a step in it, as Snakemake's SLURM executor runs a
# rule: it removes the SLURM_* variables but a few, then `srun -n1 --cpu-bind=q --cpus-per-task=N
# --nodes=1` (snakemake-executor-plugin-slurm-jobstep 0.6.1).
AS_SNAKEMAKE_STEP = """\
for v in $(compgen -e); do
  case $v in
    SLURM_JOB_ID|SLURM_JOBID|SLURM_CLUSTER_NAME|SLURM_SUBMIT_DIR|SLURM_SUBMIT_HOST) ;;
    SLURM_*|SRUN_*|SBATCH_*) unset "$v" ;;
  esac
done
exec srun -n1 --cpu-bind=q --cpus-per-task={cpus} --nodes=1 \\
"""


@pytest.mark.slurm
@pytest.mark.parametrize("where", ["batch script", "step"])
def test_pep_train_in_an_sbatch_job_launches_srun_and_c10d(slurm_cluster, tmp_path, small_synth, where):
    """A real sbatch job on the one-node cluster, PEP_LAUNCH=srun: `pep train` runs
    `srun ... torchrun --rdzv-backend=c10d`, one torchrun on the node, two gloo workers; from
    inside a step, with --overlap (else the new step would wait for the step's CPUs)."""
    params = two_process_project(tmp_path / "proj", small_synth)
    out = tmp_path / "job.out"
    script = tmp_path / "train.sbatch"
    cpus = min(2, len(os.sched_getaffinity(0)))
    train = f"pep train --params {params} --variant baseline --max-iters 2 --no-tracking"
    body = f"exec {train}" if where == "batch script" else AS_SNAKEMAKE_STEP.format(cpus=cpus) + train
    script.write_text(f"#!/bin/bash\nexport PEP_LAUNCH=srun\n{body}\n")
    t0 = time.monotonic()
    sbatch = subprocess.run(["sbatch", "--parsable", "--time=5", "--nodes=1", "--ntasks=1",
                             f"--cpus-per-task={cpus}", "--mem=4000", f"--output={out}",
                             f"--chdir={params.parent}", str(script)],
                            check=False, env=ENV, capture_output=True, text=True, timeout=60)
    assert sbatch.returncode == 0, sbatch.stderr
    job_id = sbatch.stdout.strip().split(";")[0]
    info = wait_for_job(job_id, timeout=150)
    seconds = time.monotonic() - t0
    log = out.read_text() if out.exists() else "(no job log)"
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-4000:]}"
    launched = next(line for line in log.splitlines() if "launching" in line)
    print(f"sbatch job {job_id} ({where}): {seconds:.1f} s; {launched}")
    port = 29500 + int(job_id) % 1000
    overlap = "--overlap " if where == "step" else ""
    assert re.search(rf"srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task={cpus} "
                     rf"{overlap}--kill-on-bad-exit=1 \S*python\S* -m torch.distributed.run --nnodes=1 "
                     rf"--nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=localhost:{port} "
                     rf"--rdzv-id={job_id} -m pep.cli train ", launched), launched
    assert "on cpu x2" in log, log[-4000:]
    assert (params.parent / "runs" / "baseline" / "seed0" / "model_final.pt").exists()
