"""Progress lines in logs that are not a terminal (pep.progress), and in a real `pep train`."""

from __future__ import annotations

import io
import re
import subprocess

import pytest
from conftest import BIN, ENV, make_project

from pep.progress import ProgressLog, format_duration


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_loop(log: ProgressLog, clock: Clock, last: int, step_s: float, images: int = 4,
             first: int = 0) -> list[int]:
    """Updates from first+1 to last, `step_s` seconds apart; the iterations that printed."""
    printed = []
    for it in range(first + 1, last + 1):
        clock.t += step_s
        due = log.due(it)
        line = log.update(it, images, losses={"loss_sem": 0.5, "loss_mask": 0.25} if due else None,
                          lr=1e-3 if due else None)
        assert (line is not None) == due
        if due:
            printed.append(it)
    return printed


def test_lines_every_n_iterations_and_at_the_end():
    clock, stream = Clock(), io.StringIO()
    log = ProgressLog(35, "train baseline seed 0", every_iters=10, every_s=1000, stream=stream, clock=clock)
    assert run_loop(log, clock, 35, step_s=1.0) == [10, 20, 30, 35]
    assert log.close() is None  # the last iteration was printed already
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("train baseline seed 0: iter ") for line in lines)
    assert lines[0].startswith("train baseline seed 0: iter 10/35 (28.6%)")
    assert lines[-1].startswith("train baseline seed 0: iter 35/35 (100.0%)") and lines[-1].endswith("ETA 0:00:00")


def test_lines_every_s_seconds_when_iterations_are_slow():
    clock, stream = Clock(), io.StringIO()
    log = ProgressLog(100, "train pep seed 1", every_iters=50, every_s=5, stream=stream, clock=clock)
    # 2 s an iteration: 5 s have passed at the 3rd iteration after each line, before 50 iterations
    assert run_loop(log, clock, 10, step_s=2.0) == [3, 6, 9]
    # then fast: 50 iterations come before 5 s
    assert run_loop(log, clock, 70, step_s=0.01, first=10) == [59]


def test_eta_from_the_rate_of_this_process_not_of_the_resumed_iterations():
    clock, stream = Clock(), io.StringIO()
    # resumed at 100 of 400; 2 s an iteration, 8 images each: 0.5 it/s, 4 img/s
    log = ProgressLog(400, "train pep seed 0", every_iters=50, every_s=10_000, initial=100, epochs=6,
                      device="cpu", stream=stream, clock=clock)
    for it in range(101, 151):
        clock.t += 2.0
        if log.due(it):
            line = log.update(it, 8, losses={"loss_sem": 0.41, "loss_mask": 0.82}, lr=1.95e-3,
                              epoch=it / 75)
        else:
            assert log.update(it, 8) is None
    assert line.startswith("train pep seed 0: iter 150/400 (37.5%) epoch 2.00/6 | 4.0 img/s | "
                           "loss 1.230 (sem 0.41, mask 0.82) | lr 1.95e-03 | peak mem ")
    # 100 s for 50 iterations; 250 to go at the same rate: 500 s
    assert line.endswith(" | elapsed 0:01:40 ETA 0:08:20")
    assert re.search(r"\| peak mem \d+(\.\d)? (MiB|GiB) \|", line)


def test_a_final_line_when_the_loop_stops_between_lines():
    clock, stream = Clock(), io.StringIO()
    log = ProgressLog(1000, "evaluate pep seed 0 val", every_s=30, unit="image", stream=stream, clock=clock)
    for done in range(8, 41, 8):  # 5 batches of 8 images, 1 s each: no line is due
        clock.t += 1.0
        assert not log.due(done)
        log.update(done, 8)
    assert stream.getvalue() == ""
    final = log.close()
    assert final == stream.getvalue().strip()
    assert final == "evaluate pep seed 0 val: image 40/1000 (4.0%) | 8.0 img/s | elapsed 0:00:05 ETA 0:02:00"
    assert log.close() is None  # once


def test_evaluation_prints_its_last_image_through_the_context_manager():
    clock, stream = Clock(), io.StringIO()
    with ProgressLog(16, "evaluate baseline seed 0 val", every_s=30, unit="image", stream=stream,
                     clock=clock) as log:
        for done in (8, 16):
            clock.t += 2.0
            log.update(done, 8)
    assert stream.getvalue().splitlines() == [
        "evaluate baseline seed 0 val: image 16/16 (100.0%) | 4.0 img/s | elapsed 0:00:04 ETA 0:00:00"]


def test_a_terminal_gets_the_bar_and_no_lines():
    clock, stream = Clock(), TtyStream()
    log = ProgressLog(20, "train baseline seed 0", every_iters=2, every_s=1, stream=stream, clock=clock)
    assert log.bar is not None
    assert run_loop(log, clock, 20, step_s=5.0) == []
    log.postfix(loss="1.234")
    log.close()
    assert "ETA" not in stream.getvalue() and "train baseline seed 0: iter" not in stream.getvalue()
    assert "20/20" in stream.getvalue()  # tqdm's bar
    # quiet in a terminal: nothing at all; forced lines in a terminal: the lines
    quiet = TtyStream()
    ProgressLog(5, "x", every_iters=1, bar=False, stream=quiet, clock=clock).close()
    assert quiet.getvalue() == ""
    forced = TtyStream()
    log = ProgressLog(5, "x", every_iters=1, force_lines=True, stream=forced, clock=clock)
    assert run_loop(log, clock, 5, step_s=1.0) == [1, 2, 3, 4, 5] and log.bar is None


def test_other_ranks_print_nothing():
    clock, stream = Clock(), io.StringIO()
    log = ProgressLog(10, "train pep seed 0", every_iters=1, enabled=False, stream=stream, clock=clock)
    assert run_loop(log, clock, 10, step_s=1.0) == []
    assert log.close() is None and stream.getvalue() == ""


@pytest.mark.parametrize("seconds, shown", [(0, "0:00:00"), (97, "0:01:37"), (266.4, "0:04:26"),
                                            (36_000, "10:00:00"), (86_399, "23:59:59"),
                                            (93_784, "1d 02:03:04"), (3 * 86_400, "3d 00:00:00")])
def test_durations(seconds, shown):
    assert format_duration(seconds) == shown


@pytest.mark.slow
def test_pep_train_and_evaluate_print_progress_lines_into_a_piped_log(tmp_path, small_synth):
    params = make_project(tmp_path, small_synth, progress_every_iters=2, progress_every_s=3600)
    # stdout and stderr to one pipe, as `2>&1 | tee` in dvc, Snakemake and SLURM jobs: not a tty
    cmd = [str(BIN / "pep"), "train", "--params", str(params), "--variant", "baseline", "--max-iters", "5",
           "--no-tracking"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout
    lines = [line for line in proc.stdout.splitlines() if line.startswith("train baseline seed 0: iter ")]
    assert [int(re.match(r"train baseline seed 0: iter (\d+)/5 ", line)[1]) for line in lines] == [2, 4, 5], \
        proc.stdout
    pattern = (r"train baseline seed 0: iter \d/5 \(\d+\.\d%\) epoch \d\.\d\d/4 \| \d+\.\d img/s \| "
               r"loss \d+\.\d{3} \(sem [-\d.e]+, mask [-\d.e]+\) \| lr \d\.\d\de-\d\d \| "
               r"peak mem \d+(\.\d)? (MiB|GiB) \| elapsed \d:\d\d:\d\d ETA \d:\d\d:\d\d$")
    assert all(re.match(pattern, line) for line in lines), "\n".join(lines)
    assert lines[-1].endswith("ETA 0:00:00")
    print(lines[0])

    proc = subprocess.run([str(BIN / "pep"), "evaluate", "--params", str(params), "--variant", "baseline",
                           "--quiet", "--no-tracking"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^evaluate baseline seed 0 val: image 8/8 \(100\.0%\) \| \d+\.\d img/s \| "
                     r"elapsed \d:\d\d:\d\d ETA 0:00:00$", proc.stdout, re.MULTILINE), proc.stdout
