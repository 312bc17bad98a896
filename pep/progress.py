"""Progress of a long loop, in a terminal and in a log file alike.

In a terminal (stderr is a tty) tqdm draws its bar. Anywhere else, in `dvc repro`, Snakemake
and SLURM logs that capture stdout and stderr through `2>&1 | tee`, where tqdm switches itself
off, a plain line goes to stderr every `every_iters` iterations or every `every_s` seconds,
whichever comes first, and once more at the end:

    train baseline seed 0: iter 120/450 (26.7%) epoch 2.13/6 | 12.4 img/s | loss 1.234 (sem 0.41,
    mask 0.82) | lr 1.95e-03 | peak mem 1.2 GiB | elapsed 0:01:37 ETA 0:04:26

(one line; wrapped here). The ETA comes from the mean rate since this process started, so a
resumed run does not count the iterations it did not do; img/s is the rate since the previous
line. The loop asks `due(iteration)` before it gathers what a line shows (reading a loss off a
GPU waits for the GPU), and passes it to `update` only then.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Self, TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """H:MM:SS, or "1d 02:03:04" from a day on."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}"


def peak_memory_bytes(device=None) -> int:
    """The peak memory of this process: allocated by torch on a CUDA device, else the peak
    resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _format_bytes(n: int) -> str:
    if n >= 1000 * 2**20:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


class ProgressLog:
    """One loop's progress: tqdm's bar on a terminal, plain lines in a log.

    total, name: the iterations (or images) the loop will have done at its end, and what the
    lines start with ("train baseline seed 0"). every_iters / every_s: the cadence of the lines
    (None: that trigger off); a line is also printed at `total`, and by `close()` when the last
    update was not printed. initial: where a resumed loop starts. unit: the word before the count
    ("iter", "image"). epochs: shown as "epoch e/epochs" when an update gives `epoch`. device:
    where peak memory is measured (None: no memory field). images_unit: what the rate counts.
    enabled: False prints and draws nothing (the ranks other than 0). bar: False keeps tqdm's bar
    off in a terminal (`--quiet`); the lines in a log do not depend on it. stream (default
    sys.stderr), force_lines (None: lines when the stream is not a tty) and clock make it
    testable without a terminal.
    """

    def __init__(self, total: int, name: str, every_iters: int | None = None, every_s: float | None = None, *,
                 initial: int = 0, unit: str = "iter", epochs: int | None = None, device=None,
                 enabled: bool = True, bar: bool = True, leave: bool = True, stream: TextIO | None = None,
                 force_lines: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.name, self.unit, self.epochs, self.device = total, name, unit, epochs, device
        self.every_iters = every_iters if every_iters and every_iters > 0 else None
        self.every_s = every_s if every_s and every_s > 0 else None
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.enabled = enabled
        if force_lines is None:
            try:
                force_lines = not self.stream.isatty()
            except (AttributeError, ValueError):  # no isatty, or a closed stream
                force_lines = True
        self.lines = enabled and force_lines
        self.start_iteration = self.iteration = self.last_iteration = initial
        self.start_t = self.last_t = clock()
        self.images = self.last_images = 0
        self.printed = 0  # lines written so far
        self.bar = None
        if enabled and not force_lines and bar:
            self.bar = tqdm(total=total, initial=initial, desc=name, unit=unit, dynamic_ncols=True,
                            leave=leave, file=self.stream)

    def due(self, iteration: int) -> bool:
        """Whether `update(iteration, ...)` will print a line: every_iters iterations or every_s
        seconds after the previous line, and at the last iteration."""
        if not self.lines or iteration <= self.last_iteration:
            return False
        if iteration >= self.total:
            return True
        if self.every_iters is not None and iteration - self.last_iteration >= self.every_iters:
            return True
        return self.every_s is not None and self.clock() - self.last_t >= self.every_s

    def update(self, iteration: int, images: int = 0, *, losses: Mapping[str, float] | None = None,
               lr: float | None = None, epoch: float | None = None) -> str | None:
        """The loop is at `iteration` (done so far, not an increment) and processed `images`
        more images since the previous update; the line printed, if one was due."""
        if not self.enabled:
            return None
        line = None
        due = self.due(iteration)
        self.iteration = iteration
        self.images += images
        if due:
            line = self._line(losses, lr, epoch)
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
        return line

    def postfix(self, **values) -> None:
        """What tqdm's bar shows after the count (a terminal only)."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> str | None:
        """The final line, when the last update was not printed; closes the bar."""
        line = None
        if self.lines and self.iteration > self.last_iteration:
            line = self._line(None, None, None)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        return line

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, losses, lr, epoch) -> str:
        now = self.clock()
        it = self.iteration
        elapsed = now - self.start_t
        window = now - self.last_t
        parts = [f"{self.name}: {self.unit} {it}/{self.total} ({100 * it / max(self.total, 1):.1f}%)"]
        if epoch is not None:
            parts[0] += f" epoch {epoch:.2f}" + (f"/{self.epochs}" if self.epochs is not None else "")
        fields = [parts[0]]
        if window > 0:
            fields.append(f"{(self.images - self.last_images) / window:.1f} img/s")
        if losses:
            values = {k: float(v) for k, v in losses.items()}
            shown = ", ".join(f"{k.removeprefix('loss_')} {v:.3g}" for k, v in values.items())
            fields.append(f"loss {sum(values.values()):.3f} ({shown})")
        if lr is not None:
            fields.append(f"lr {lr:.2e}")
        if self.device is not None:
            fields.append(f"peak mem {_format_bytes(peak_memory_bytes(self.device))}")
        done = it - self.start_iteration
        if it >= self.total:
            eta = "0:00:00"
        elif done > 0 and elapsed > 0:
            eta = format_duration((self.total - it) * elapsed / done)
        else:
            eta = "?"
        fields.append(f"elapsed {format_duration(elapsed)} ETA {eta}")
        line = " | ".join(fields)
        print(line, file=self.stream, flush=True)
        self.last_iteration, self.last_t, self.last_images = it, now, self.images
        self.printed += 1
        return line
