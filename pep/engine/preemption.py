"""Training that survives the scheduler: a stop signal ends the run after the current iteration,
with one checkpoint, and an exit status that says "resume me".

SLURM ends a job at its time limit with SIGTERM (then, KillWait seconds later, SIGKILL), sends
SIGTERM on preemption and `scancel`, and sends any signal asked for with `sbatch
--signal=SIG@SECONDS` that many seconds before the limit; users send SIGUSR1 by convention.
On SIGTERM or SIGUSR1 every training process finishes the iteration it is in; the processes
agree on the iteration to stop after (an all-reduce of the flag, so that no rank waits in a
collective that the others have left), rank 0 writes one checkpoint, and `pep train` exits with
RESUME_EXIT_CODE (75, EX_TEMPFAIL of sysexits.h: "try again"). The same command run again
resumes from that checkpoint, as after a crash (pep.engine.checkpoint), and ends with the
weights an uninterrupted run has; Snakemake's `retries` (the slurm profile) runs it again.

What runs around the training processes must let them finish: the Snakemake rule's shell
ignores both signals (so does `tee`, which it pipes the log through); data loader workers
outlive them (`serve_through_stop_signals`, their worker_init_fn); `pep train`'s own launcher of
torchrun passes them on to the workers (pep.distributed.launch).
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from pep import distributed
from pep.errors import PepError

RESUME_EXIT_CODE = distributed.RESUME_EXIT_CODE  # 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(PepError):
    """Training stopped on a signal with its checkpoint written: rerun to resume."""

    exit_code = RESUME_EXIT_CODE
    resumable = True  # pep.tracking.runs marks the MLflow run KILLED, so that the rerun resumes it


class StopRequest:
    """Records the first stop signal while installed (a context manager); `agreed` tells every
    rank whether any rank got one. Outside the main thread (where Python delivers signals) it
    installs nothing and never asks to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        # a flag only: the loop acts on it between iterations, where stopping is safe
        if self.signum is None:
            self.signum = signum

    def agreed(self, device: torch.device) -> int | None:
        """The signal that some rank received (the same answer on every rank), or None. Under
        DDP a collective: every rank calls it once per iteration."""
        local = self.signum or 0
        if not distributed.is_distributed():
            return local or None
        flag = torch.tensor([local], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def serve_through_stop_signals(worker_id: int | None = None) -> None:
    """A data loader worker's worker_init_fn: the worker outlives the stop signal, which is for
    the training loop (a worker that died of it would fail the iteration that the loop finishes).

    SLURM signals every process of the job, workers included. But SIGTERM is also how the data
    loader ends workers that linger at shutdown (multiprocessing's terminate, then join), so a
    worker that ignored it outright would hang its parent's exit, as after an error in a worker.
    The two are told apart by the sender, as torch's own worker handler does: the signal is
    blocked and a thread waits for it, exiting when the parent sent it and ignoring it otherwise.
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the thread below inherits the mask
    threading.Thread(target=_exit_on_the_parents_sigterm, name="pep-sigterm", daemon=True).start()


def _exit_on_the_parents_sigterm() -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)
