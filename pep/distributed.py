"""torch.distributed in one place: set-up from torchrun's environment, and the loss normaliser
that makes N processes train exactly the model one process would with the same total batch.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs as rank 0 of 1.
NCCL serves GPUs and gloo the CPU, so the same command runs on a laptop, on 8 GPUs and on
several nodes.

`pep train` starts its workers itself (`launch_plan`, `launch`): on one machine, or in a SLURM
allocation of one node, `torchrun --standalone` with one process per GPU; in a SLURM allocation
of several nodes, one torchrun per node through `srun`, meeting by c10d rendezvous on the
allocation's first node. Run `pep train` once per job: from the batch script, salloc's shell,
or one task of a step (`srun -n1`, as Snakemake's SLURM executor runs a rule); inside a step
the srun gets `--overlap`, since the step already holds the node's CPUs and GPUs. The node
count is the job's: SLURM_JOB_NUM_NODES, else (inside a step, where Snakemake's executor
strips it) the hosts of SLURM_JOB_NODELIST, else SLURM_NNODES. Environment variables that
steer it:

- PEP_LAUNCH: `auto` (the default: as above), `standalone` (torchrun on this node only, even in
  an allocation of several nodes) or `srun` (the multi-node path even in a one-node
  allocation: how a one-node test cluster runs the srun + c10d launch).
- MASTER_PORT: the rendezvous port on the first node; without it 29500 + SLURM_JOB_ID mod 1000,
  so that two jobs that share a first node do not take the same port.

The first node's name comes from SLURM_JOB_NODELIST, expanded by `scontrol show hostnames`. The
other nodes run the same Python at the same path (a shared file system), as usual on clusters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil
import torch
import torch.distributed as dist

from pep.errors import PepError

log = logging.getLogger("pep")
RESUME_EXIT_CODE = 75  # pep.engine.preemption's "stopped for the scheduler: run me again"
SHUTDOWN_GRACE_S = 300  # torchrun's wait for its workers' last iteration and checkpoint


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(setting: str, local_rank: int = 0) -> torch.device:
    """`auto` takes a GPU when there is one; `cuda` insists on one."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PepError("train.device is 'cuda' but no CUDA device is available "
                           "(set train.device: auto or cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device_setting: str) -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_setting, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return Context(rank, world_size, local_rank, device)


def processes_to_launch(train_cfg: dict) -> int:
    """How many training processes this node should run: train.processes, where `auto` means
    one per visible GPU (inside a SLURM allocation, the GPUs it was given) and 1 on a CPU."""
    setting = train_cfg["processes"]
    if setting != "auto":
        return int(setting)
    if train_cfg["device"] == "cpu" or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()


def under_launcher() -> bool:
    """True inside a process that torchrun started."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(processes: int, argv: Sequence[str], python: str | None = None,
                     nodes: int | None = None, rendezvous: Sequence[str] = ()) -> list[str]:
    """The same `pep` command, run by torchrun as `processes` workers on this node: on this
    node alone (`--standalone`), or as one of `nodes` meeting by `rendezvous`."""
    where = ["--standalone"] if nodes is None else [f"--nnodes={nodes}"]
    return [python or sys.executable, "-m", "torch.distributed.run", *where,
            f"--nproc-per-node={processes}", *rendezvous, "-m", "pep.cli", *argv]


LAUNCH_MODES = ("auto", "standalone", "srun")
RDZV_BASE_PORT = 29500  # torchrun's own default port, shifted by the job id (see rendezvous_port)


@dataclass(frozen=True)
class LaunchPlan:
    """How `pep train` starts its workers: `command` is what this process runs; `torchrun` is
    the torchrun command that runs on each node (the same as `command` without srun)."""

    mode: str  # "standalone" or "srun"
    nodes: int
    processes_per_node: int
    command: tuple[str, ...]
    torchrun: tuple[str, ...]

    @property
    def processes(self) -> int:
        return self.nodes * self.processes_per_node


def launch_plan(processes: int, argv: Sequence[str], environ: Mapping[str, str] | None = None,
                python: str | None = None) -> LaunchPlan | None:
    """The launch of `pep <argv>` with `processes` workers per node, from the environment
    `environ` (os.environ by default); None when this process should simply train itself
    (one process on one node). See the module's docstring for the rules and variables."""
    env = os.environ if environ is None else environ
    python = python or sys.executable
    mode = env.get("PEP_LAUNCH", "").strip().lower() or "auto"
    if mode not in LAUNCH_MODES:
        raise PepError(f"PEP_LAUNCH is {env['PEP_LAUNCH']!r}; use one of {', '.join(LAUNCH_MODES)}")
    job_id = env.get("SLURM_JOB_ID", "")
    if mode == "srun" and not job_id:
        raise PepError("PEP_LAUNCH=srun needs a SLURM allocation, and SLURM_JOB_ID is not set: "
                       "run `pep train` in an sbatch script or in salloc's shell")
    nodes = allocation_nodes(env) if job_id and mode != "standalone" else 1
    if mode == "auto":
        mode = "srun" if nodes > 1 else "standalone"
    if mode == "standalone":
        if processes <= 1:
            return None
        command = tuple(torchrun_command(processes, argv, python))
        return LaunchPlan("standalone", 1, processes, command, command)

    host = allocation_hosts(env)[0]
    port = rendezvous_port(env)
    torchrun = tuple(torchrun_command(processes, argv, python, nodes=nodes, rendezvous=(
        "--rdzv-backend=c10d", f"--rdzv-endpoint={host}:{port}", f"--rdzv-id={job_id}")))
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
    if env.get("SLURM_CPUS_PER_TASK"):
        # Some Slurm releases (22.05 on) no longer hand sbatch's --cpus-per-task on to srun:
        # the one task per node, torchrun and all its workers, would be bound to one CPU.
        srun.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    if env.get("SLURM_STEP_ID"):
        # Inside a step, which holds this node's resources: without --overlap the new step
        # would wait for them until the job's time runs out.
        srun.append("--overlap")
    srun.append("--kill-on-bad-exit=1")
    return LaunchPlan("srun", nodes, processes, (*srun, *torchrun), torchrun)


def allocation_nodes(environ: Mapping[str, str] | None = None) -> int:
    """How many nodes the SLURM job holds: SLURM_JOB_NUM_NODES; inside a step without it (a
    step's SLURM_NNODES counts the step's nodes), the hosts of SLURM_JOB_NODELIST; else
    SLURM_NNODES; else 1."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_NUM_NODES", "").strip():
        return _count(env, "SLURM_JOB_NUM_NODES")
    if env.get("SLURM_STEP_ID", "").strip():
        return len(allocation_hosts(env))
    return _count(env, "SLURM_NNODES") if env.get("SLURM_NNODES", "").strip() else 1


def _count(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    if not value.isdigit() or int(value) < 1:
        raise PepError(f"{name} is {value!r}, not a number of nodes")
    return int(value)


def allocation_hosts(environ: Mapping[str, str] | None = None) -> list[str]:
    """The hosts of the SLURM job, first node first: SLURM_JOB_NODELIST (e.g. `gpu[01-03,07]`)
    expanded by `scontrol show hostnames`; a plain host name (one node) as it is."""
    env = os.environ if environ is None else environ
    var = "SLURM_JOB_NODELIST" if env.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
    nodelist = env.get(var, "").strip()
    if not nodelist:
        raise PepError("SLURM_JOB_NODELIST is not set: cannot tell the allocation's nodes and "
                       "the first of them, where the workers meet")
    if not re.search(r"[\[,\s]", nodelist):
        return [nodelist]
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        raise PepError(f"cannot expand {var}={nodelist} to find the first node: `scontrol` "
                       "(SLURM's client tools) is not on PATH")
    try:
        proc = subprocess.run([scontrol, "show", "hostnames", nodelist], check=False,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PepError(f"cannot expand {var}={nodelist}: `scontrol show hostnames` failed: "
                       f"{exc}") from exc
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        raise PepError(f"cannot expand {var}={nodelist}: `scontrol show hostnames` exited "
                       f"{proc.returncode}: {(proc.stderr or proc.stdout).strip() or 'no hosts'}")
    return hosts


def rendezvous_port(environ: Mapping[str, str] | None = None) -> int:
    """MASTER_PORT if set, else 29500 + SLURM_JOB_ID mod 1000 (29500 outside SLURM)."""
    env = os.environ if environ is None else environ
    given = env.get("MASTER_PORT", "").strip()
    if given:
        if not given.isdigit() or not 0 < int(given) < 65536:
            raise PepError(f"MASTER_PORT is {given!r}, not a port number (1-65535)")
        return int(given)
    digits = re.sub(r"\D", "", env.get("SLURM_JOB_ID", ""))
    return RDZV_BASE_PORT + (int(digits) % 1000 if digits else 0)


def launch(plan: LaunchPlan) -> int:
    """Run the plan's command, logging it; its exit status."""
    where = "torchrun on this node"
    if plan.mode == "srun":
        nodes = f"{plan.nodes} node" + ("s" if plan.nodes > 1 else "")
        where = f"{nodes} x {plan.processes_per_node}, srun + c10d rendezvous"
    log.info("launching %d training processes (%s): %s", plan.processes, where,
             shlex.join(plan.command))
    try:
        # SIGUSR1 ignored: torchrun has no handler for it and would die of it, leaving its
        # workers behind (they install their own). On SIGTERM torchrun passes it on and gives
        # the workers SHUTDOWN_GRACE_S to stop.
        env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT":
               os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_GRACE_S))}
        child = subprocess.Popen(plan.command, env=env,
                                 preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    except FileNotFoundError as exc:
        raise PepError(f"cannot start the training processes: {plan.command[0]} not found"
                       + (" (SLURM's srun is not on PATH)" if plan.mode == "srun" else "")) from exc
    return _wait_passing_signals_on(child, through_srun=plan.mode == "srun")


def _wait_passing_signals_on(child: subprocess.Popen, through_srun: bool) -> int:
    """Wait for the launched workers, passing a stop signal on to them; their exit status, or
    pep.engine.preemption's "resume me" (75) when a stop signal came and they stopped.

    SIGTERM or SIGUSR1 (the scheduler's time limit, preemption; this process may be the only
    one that got it) reaches every worker, each of which finishes its iteration (rank 0 writes
    a checkpoint) and exits: on this node as SIGUSR1 to each process below torchrun (which
    starts its workers in sessions of their own, and ignores SIGUSR1); through srun as SIGTERM,
    which srun hands to each node's torchrun and torchrun to its workers. Ctrl-C (SIGINT) goes
    to torchrun (or srun) as itself, which stops the workers."""
    received: list[int] = []

    def pass_on(signum, frame):
        received.append(signum)
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if signum == signal.SIGINT or through_srun:
                child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
            else:
                for process in psutil.Process(child.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        process.send_signal(signal.SIGUSR1)

    stop_signals = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    previous = {signum: signal.signal(signum, pass_on) for signum in stop_signals}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped = [s for s in received if s != signal.SIGINT]
    if stopped and code != 0:
        log.info("the training processes stopped on %s; the same command resumes them",
                 signal.Signals(stopped[0]).name)
        return RESUME_EXIT_CODE
    if signal.SIGINT in received:
        raise KeyboardInterrupt
    return code


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_divisor(count: torch.Tensor | float, device: torch.device | None = None) -> torch.Tensor:
    """The divisor for a loss summed over `count` items of this process, such that after DDP
    averages gradients over processes, the result equals one process dividing the whole
    batch's sum by the whole batch's count: (sum of counts over processes) / world size.

    Always a collective under DDP: every rank must call it the same number of times.
    """
    value = torch.as_tensor(count, dtype=torch.float32, device=device).detach().clone()
    if is_distributed():
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value.clamp(min=1.0)


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged numbers over processes (for the log, not the gradients)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()
