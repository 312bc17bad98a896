"""Where a training step or an inference pass of PEP spends its time, by box of Fig. 2.

The model marks each box with a profiler scope (`pep.model.scopes`). Under `torch.profiler`:

- a scope's **forward** time is its own wall time less that of the scopes inside it;
- a **backward** op is charged to the scope of the forward op that made it: autograd gives a
  forward op and its backward node one sequence number, which the profiler records on both;
- the optimizer's step is its own row, and what no scope holds (zeroing the gradients, summing
  the losses, the autograd engine's own work, Python between the scopes) is `other`.

The rows add up to the profiled wall time. The profiler slows small ops more than large ones,
so the shares, not the absolute times, are what to read: the timed steps outside the profiler
give those.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from torch.profiler import ProfilerActivity, profile

from pep.model.scopes import PREFIX, SCOPES

BACKWARD_EVENT = "autograd::engine::evaluate_function"
OPTIMIZER = "optimizer"
OTHER = "other"


@dataclass
class Breakdown:
    """ms per image of each scope, forward and backward, over the profiled calls."""

    forward: dict[str, float]
    backward: dict[str, float]
    wall_ms_per_image: float  # the profiled calls' wall time per image: the rows' sum

    def total(self, name: str) -> float:
        return self.forward.get(name, 0.0) + self.backward.get(name, 0.0)

    def rows(self, min_ms: float = 0.0) -> list[str]:
        """Scopes in Fig. 2's order, then the optimizer and `other`; those above `min_ms`."""
        return [n for n in (*SCOPES, OPTIMIZER, OTHER) if self.total(n) > min_ms]


def _scope_of(event) -> str | None:
    """The innermost model scope around a profiler event, `other` when none, None inside the
    autograd engine (a backward op: charged by sequence number instead)."""
    parent = event
    while parent is not None:
        if parent.name.startswith(PREFIX):
            return parent.name[len(PREFIX):]
        if parent.name.startswith(BACKWARD_EVENT):
            return None
        parent = parent.cpu_parent
    return OTHER


def attribute(events, wall_us: float, images: int) -> Breakdown:
    """Charge the profiler's events to scopes; `wall_us` is the profiled calls' wall time."""
    forward: Counter = Counter()
    backward: Counter = Counter()
    scope_of_sequence: dict[int, str] = {}
    for e in events:
        if e.name.startswith(PREFIX):
            inner = _inner_scopes_time(e)
            forward[e.name[len(PREFIX):]] += e.cpu_time_total - inner
        elif e.name.startswith("Optimizer.step"):
            forward[OPTIMIZER] += e.cpu_time_total
        elif e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_EVENT):
            scope = _scope_of(e)
            if scope is not None:
                scope_of_sequence.setdefault(e.sequence_nr, scope)  # the outermost op comes first
    for e in events:
        if e.name.startswith(BACKWARD_EVENT):
            backward[scope_of_sequence.get(e.sequence_nr, OTHER)] += e.cpu_time_total
    # the rest of the wall time: Python and ops outside every scope (their backward is `other` too)
    forward[OTHER] = max(0.0, wall_us - sum(forward.values()) - sum(backward.values()))
    per_image = 1 / (1000 * images)
    return Breakdown({k: v * per_image for k, v in forward.items()},
                     {k: v * per_image for k, v in backward.items()}, wall_us * per_image)


def _inner_scopes_time(event) -> float:
    """Total time of the scopes nested in `event` (the outermost ones only)."""
    total, stack = 0.0, list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name.startswith(PREFIX):
            total += child.cpu_time_total
        else:
            stack.extend(child.cpu_children)
    return total


def profile_calls(call: Callable[[], object], images: int, iters: int) -> Breakdown:
    """Profile `iters` calls of `call` (one training step, or one inference pass, of a batch
    of `images`)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(iters):
            call()
        wall_us = (time.perf_counter() - started) * 1e6
    return attribute(prof.events(), wall_us, images * iters)
