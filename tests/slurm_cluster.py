"""A real one-node SLURM cluster for the tests (Debian's `slurm-wlm` + `munge`, no systemd).

`running_cluster()` installs the packages when they are missing, starts munged, slurmctld and
slurmd as plain daemons and waits for the node to be idle; `slurm_cluster` is the same as a
session-scoped pytest fixture (`pytest_plugins = ["slurm_cluster"]` in a test module makes it
available, once for the whole session), and `run_snakemake_on_slurm()` runs a workflow through
the project's `slurm` profile with the options that a cluster without an accounting database
needs. See ../shared/SLURM.md for the
configuration and its traps.

Several pytest sessions on one machine share one cluster: every user holds a shared lock on
USERS_LOCK, and the last one out stops the daemons that this harness started (listed in
STATE_FILE); SETUP_LOCK keeps a start and a stop from overlapping. A cluster that was running
before the harness came is reused and never stopped.
Importing this module does nothing by itself. PYTEST_DONT_REWRITE: it has no asserts, and test
modules import it before their `pytest_plugins` line registers it (pytest would warn).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from system_packages import apt_install

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SLURM_PROFILE = PROJECT_ROOT / "workflow" / "profiles" / "slurm"

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch",
            "srun", "scontrol", "scancel")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
CONF_MARKER = "# Written by the PEP test harness (tests/slurm_cluster.py)"
CTLD_SPOOL = Path("/var/spool/slurmctld")
SLURMD_SPOOL = Path("/var/spool/slurmd")
LOG_DIR = Path("/var/log/slurm")
SETUP_LOCK = Path("/run/lock/pep-slurm-harness.setup.lock")
USERS_LOCK = Path("/run/lock/pep-slurm-harness.users.lock")
STATE_FILE = Path("/run/pep-slurm-harness.json")
PARTITION = "debug"

# Snakemake options for a cluster without an accounting database (see SLURM.md): `sacct` fails
# there and the plugin would poll it forever; `squeue` works while MinJobAge (3600 s) keeps
# finished jobs listed. The short first poll and the kept logs are for the tests.
TEST_SNAKEMAKE_ARGS = ("--slurm-status-command", "squeue",
                       "--slurm-init-seconds-before-status-checks", "2",
                       "--slurm-keep-successful-logs")

# (name, pid file, command); munged drops to user munge itself only when started as munge.
DAEMONS = (
    ("munged", Path("/run/munge/munged.pid"), ["runuser", "-u", "munge", "--", "munged"]),
    ("slurmctld", Path("/run/slurmctld.pid"), ["slurmctld"]),
    ("slurmd", Path("/run/slurmd.pid"), ["slurmd", "-N", "localhost"]),
)

SLURM_CONF_TEMPLATE = """\
{marker}
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={ctld_spool}
SlurmdSpoolDir={slurmd_spool}
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
# No accounting database: sacct does not work, so Snakemake must poll with squeue, which
# sees a finished job for MinJobAge seconds: longer than a test's whole run, whose check reads
# every job's final state at its end (300 s lost the first jobs of a slow pipeline run).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(Exception):
    """SLURM cannot be set up on this machine (not root, no apt-get, the install failed)."""


class SlurmStartError(Exception):
    """The packages are there but the cluster did not come up: a real failure."""


@dataclass
class SlurmCluster:
    partition: str
    started: list[str] = field(default_factory=list)  # daemons this process started
    install_s: float = 0.0  # time spent installing packages (0 when present)
    start_s: float = 0.0  # from the first daemon start until the node was idle


@dataclass
class SnakemakeRun:
    process: subprocess.CompletedProcess
    job_ids: list[str]  # SLURM job ids the executor submitted, in order


def _run(cmd, check=False, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text)


def _in_ci() -> bool:
    return any(os.environ.get(v, "").lower() not in ("", "0", "false", "no")
               for v in ("CI", "PEP_CI"))


# --- packages -------------------------------------------------------------------------------

def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None
            and not Path("/usr/sbin", b).exists()]


def ensure_packages() -> float:
    """Install slurm-wlm and munge when any of their programs is missing; return seconds spent."""
    missing = _missing_binaries()
    if not missing:
        return 0.0
    t0 = time.monotonic()
    problem = apt_install(PACKAGES, lambda: not _missing_binaries())
    if problem is not None:
        raise SlurmUnavailable(f"SLURM programs missing ({', '.join(missing)}): {problem}")
    return time.monotonic() - t0


# --- daemons --------------------------------------------------------------------------------

def _pid_of(name: str, pidfile: Path) -> int | None:
    """The PID in `pidfile` if that process is alive and is `name` (not a recycled PID)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    # A zombie has exited; only its parent (here PID 1) has yet to reap it.
    return pid if comm == name and state != "Z" else None


def _node_memory_mb() -> int:
    """MemAvailable minus 1 GiB for everything else, never above what slurmd detects
    (a RealMemory above `slurmd -C` drains the node)."""
    avail_kb = int(re.search(r"^MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text(),
                             re.M).group(1))
    memory = avail_kb // 1024 - 1024
    detected = re.search(r"RealMemory=(\d+)", _run(["slurmd", "-C"]).stdout)
    if detected:
        memory = min(memory, int(detected.group(1)))
    return max(memory, 1)


def _write_slurm_conf() -> None:
    text = SLURM_CONF_TEMPLATE.format(
        marker=CONF_MARKER, ctld_spool=CTLD_SPOOL, slurmd_spool=SLURMD_SPOOL, log_dir=LOG_DIR,
        cpus=len(os.sched_getaffinity(0)), memory_mb=_node_memory_mb(), partition=PARTITION)
    if SLURM_CONF.exists() and CONF_MARKER not in SLURM_CONF.read_text():
        raise SlurmUnavailable(f"{SLURM_CONF} exists and was not written by this harness; "
                               "not overwriting it (start that cluster, or move the file away)")
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(text)


def _prepare_munge() -> None:
    key = Path("/etc/munge/munge.key")
    steps = [["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"]]
    if not key.exists():  # the package's postinst normally made it
        steps += [["install", "-d", "-o", "munge", "-g", "munge", "-m", "0700", str(key.parent)],
                  ["mungekey", "--create", "--keyfile", str(key)],
                  ["chown", "munge:munge", str(key)], ["chmod", "0600", str(key)]]
    for cmd in steps:
        proc = _run(cmd)
        if proc.returncode != 0:
            raise SlurmStartError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip()}")


def _prepare_slurm_dirs() -> None:
    for path, owner in ((CTLD_SPOOL, "slurm"), (SLURMD_SPOOL, "root"), (LOG_DIR, "slurm")):
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, owner, owner)


def _start(name: str, pidfile: Path, cmd: list[str], timeout: float = 20) -> int:
    """Start a self-daemonising daemon and return its PID once its pid file names it."""
    proc = _run(cmd, timeout=timeout)
    if proc.returncode != 0:
        raise SlurmStartError(f"`{shlex.join(cmd)}` exited {proc.returncode}: "
                              f"{(proc.stderr or proc.stdout).strip()}\n{_logs()}")
    deadline = time.monotonic() + timeout
    while (pid := _pid_of(name, pidfile)) is None:
        if time.monotonic() > deadline:
            raise SlurmStartError(f"{name} wrote no live PID to {pidfile} within {timeout} s\n"
                                  f"{_logs()}")
        time.sleep(0.1)
    return pid


def _stop(name: str, pidfile: Path, timeout: float = 20) -> None:
    pid = _pid_of(name, pidfile)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_of(name, pidfile) == pid:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    # slurmctld (running as slurm by then) cannot delete its pid file in /run; a stale one
    # makes the package's prerm call scancel, which fails without a controller.
    with contextlib.suppress(OSError, ValueError, IndexError):
        if int(pidfile.read_text().split()[0]) == pid:
            pidfile.unlink()


def _logs() -> str:
    return "\n".join(_tail(LOG_DIR / f) for f in ("slurmctld.log", "slurmd.log"))


def _controller_up() -> bool:
    try:
        return " is UP" in _run(["scontrol", "ping"], timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_states() -> dict[str, str]:
    """Node name -> state as `sinfo` prints it (idle, mix, alloc, down*, drain, ...)."""
    out = _run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=15).stdout
    return dict(line.split(None, 1) for line in out.splitlines() if line.strip())


def default_partition() -> str:
    out = _run(["sinfo", "-h", "-o", "%P"], timeout=15).stdout.split()
    return next((p.rstrip("*") for p in out if p.endswith("*")), out[0] if out else PARTITION)


def _wait_for_node(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = node_states()
        if any(s in ("idle", "mix", "alloc") for s in states.values()):
            return
        if time.monotonic() > deadline:
            reasons = _run(["sinfo", "-R"], timeout=15).stdout
            raise SlurmStartError(f"no SLURM node became idle within {timeout:.0f} s "
                                  f"(sinfo: {states or 'no nodes'}; {reasons.strip()})\n{_logs()}")
        time.sleep(0.2)


def _read_state() -> list[str]:
    try:
        return json.loads(STATE_FILE.read_text())["started"]
    except (OSError, ValueError, KeyError):
        return []


def _write_state(started: list[str]) -> None:
    STATE_FILE.write_text(json.dumps({"started": started}))


def _bring_up(timeout: float) -> SlurmCluster:
    """Start what is not running (under the exclusive lock); reuse what is."""
    running = {name for name, pidfile, _ in DAEMONS if _pid_of(name, pidfile)}
    cluster = SlurmCluster(partition=PARTITION)
    if not running and _controller_up():
        # A cluster this harness knows nothing about (no local pid files) answers: use it.
        _wait_for_node(timeout)
        cluster.partition = default_partition()
        return cluster
    t0 = time.monotonic()
    if "munged" not in running:
        _prepare_munge()
    if "slurmctld" not in running:
        _write_slurm_conf()
        _prepare_slurm_dirs()
    for name, pidfile, cmd in DAEMONS:
        if name not in running:
            _start(name, pidfile, cmd)
            cluster.started.append(name)
            # Record at once, so that a crash later still lets the next user stop it.
            _write_state(sorted(set(_read_state()) | {name}, key=[d[0] for d in DAEMONS].index))
        if name == "munged":
            check = subprocess.run("munge -n | unmunge", shell=True, capture_output=True,
                                   text=True, timeout=15)
            if check.returncode != 0:
                raise SlurmStartError(f"munge does not work: {check.stderr.strip()}")
    _wait_for_node(timeout)
    cluster.start_s = time.monotonic() - t0 if cluster.started else 0.0
    cluster.partition = default_partition()
    return cluster


def _tear_down() -> None:
    """Stop the daemons the harness started (last user only), newest first."""
    started = _read_state()
    if "slurmctld" in started and _controller_up():
        _run(["scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}"], timeout=30)
        time.sleep(1)  # let slurmd kill the job steps before it goes
    for name, pidfile, _ in reversed(DAEMONS):
        if name in started:
            _stop(name, pidfile)
    if "slurmctld" in started:
        # A clean state for the next start (old jobs and node states would come back).
        for child in CTLD_SPOOL.glob("*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    STATE_FILE.unlink(missing_ok=True)


@contextlib.contextmanager
def running_cluster(timeout: float = 60):
    """Yield a SlurmCluster whose node is idle; stop what the harness started when the last
    user leaves. Raises SlurmUnavailable when SLURM cannot be installed here."""
    install_s = ensure_packages()
    SETUP_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(SETUP_LOCK, "a") as setup, open(USERS_LOCK, "a") as users:
        fcntl.flock(setup, fcntl.LOCK_EX)
        try:
            cluster = _bring_up(timeout)
            fcntl.flock(users, fcntl.LOCK_SH)
        except BaseException:
            if _may_stop(users):
                _tear_down()
            raise
        finally:
            fcntl.flock(setup, fcntl.LOCK_UN)
        cluster.install_s = install_s
        try:
            yield cluster
        finally:
            fcntl.flock(setup, fcntl.LOCK_EX)
            if _may_stop(users):
                _tear_down()


def _may_stop(users) -> bool:
    """True when no other session uses the cluster (the caller holds the setup lock)."""
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # the last of the others stops it
    return True


def unavailable(reason: str):
    """Skip where SLURM cannot be had, but fail in CI (CI or PEP_CI set), so that the SLURM
    tests never vanish silently there."""
    if _in_ci():
        pytest.fail(f"no SLURM cluster in CI: {reason}", pytrace=False)
    pytest.skip(f"no SLURM cluster: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster, shared by the whole session (register this module with
    `pytest_plugins = ["slurm_cluster"]` to use it)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster())
        except SlurmUnavailable as exc:
            unavailable(str(exc))
        except SlurmStartError as exc:
            pytest.fail(f"the SLURM cluster did not start: {exc}", pytrace=False)
        yield cluster


# --- Snakemake ------------------------------------------------------------------------------

JOB_ID_RE = re.compile(r"has been submitted with SLURM jobid (\d+)")  # the plugin's log line


def run_snakemake_on_slurm(workdir, targets=(), extra_args=(), timeout: int = 240, *,
                           profile: Path = SLURM_PROFILE, snakemake: str | None = None,
                           env: dict | None = None) -> SnakemakeRun:
    """Run `snakemake --executor slurm --profile <profile>` in `workdir` with the options that a
    cluster without accounting needs; return the finished process and the SLURM job ids.

    `timeout -k 10` bounds it: the plugin can hang polling, and only SIGINT (what `timeout`
    sends first here) makes it cancel its SLURM jobs. The jobs inherit this environment
    (--export=ALL), so the virtual environment's bin goes first on PATH.
    """
    cmd, env = _snakemake_command(targets, extra_args, timeout, profile, snakemake, env)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout + 30)
    return SnakemakeRun(proc, job_ids_in(proc.stdout + proc.stderr))


def start_snakemake_on_slurm(workdir, targets=(), extra_args=(), timeout: int = 240, *,
                             profile: Path = SLURM_PROFILE, log: Path) -> subprocess.Popen:
    """`run_snakemake_on_slurm` in the background, its output into the file `log`."""
    cmd, env = _snakemake_command(targets, extra_args, timeout, profile, None, None)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                stdin=subprocess.DEVNULL)


def job_ids_in(output: str) -> list[str]:
    """The SLURM job ids that Snakemake's output says it submitted, in order."""
    return list(dict.fromkeys(JOB_ID_RE.findall(output)))


def _snakemake_command(targets, extra_args, timeout, profile, snakemake, env) -> tuple[list[str], dict]:
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{PROJECT_ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    snakemake = snakemake or shutil.which("snakemake", path=env["PATH"]) or "snakemake"
    cmd = ["timeout", "-s", "INT", "-k", "10", str(timeout), snakemake,
           "--executor", "slurm", "--profile", str(profile), *TEST_SNAKEMAKE_ARGS,
           *extra_args, *targets]
    return cmd, env


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, ExitCode, Partition, StdOut, ...); finished jobs
    stay visible for MinJobAge seconds."""
    out = _run(["scontrol", "-o", "show", "job", str(job_id)], timeout=15).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
