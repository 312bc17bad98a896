"""Named scopes for profilers: every box of Fig. 2 runs inside a `torch.profiler.record_function`
scope named after it, so that a profile says where a training step or an inference pass spends
its time (benchmarks/throughput.py's per-module breakdown reads them; so does any
`torch.profiler.profile` of one's own). Outside a profiler a scope costs about a microsecond.

Names nest with dots: a scope's time is its own, less that of the scopes inside it.
"""

from __future__ import annotations

from torch.profiler import record_function

PREFIX = "pep::"

# In the order of Fig. 2; `*.loss` are the module's training losses, `targets` the ground truth's
# assignment to grid cells (training only), `postprocess` everything after the masks.
SCOPES = (
    "backbone",                  # ResNet, the input's normalisation included
    "fpn",
    "perceiving",                # resize to the grids, category and descriptor towers
    "perceiving.targets",        # SOLOv2's cell assignment and the masks at 1/4 scale
    "perceiving.loss",           # Eq. 2
    "perceiving.select",         # the original descriptors (training: positives + negatives)
    "excavating",                # windows, centre and class maps, mined descriptors, Eq. 3-4
    "purifying",                 # similarity matrix: its loss (Eq. 5) or the merge at inference
    "mask_learning.feature",     # the general feature
    "mask_learning.masks",       # each descriptor's mask (inference)
    "mask_learning.loss",        # each descriptor's mask and the dice loss (Eq. 6-7)
    "postprocess",               # maskness, Matrix NMS, resizing to the image
)


def scope(name: str) -> record_function:
    """`with scope("excavating"): ...` marks the block for profilers; `name` is one of SCOPES."""
    if name not in SCOPES:
        raise ValueError(f"unknown profiler scope {name!r} (expected one of: {', '.join(SCOPES)})")
    return record_function(PREFIX + name)
