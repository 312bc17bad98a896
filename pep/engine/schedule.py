"""The learning-rate recipe as a function of the iteration: linear warm-up, then step decay
at given epochs (the paper's) or a cosine over the whole run (the CPU profile's)."""

from __future__ import annotations

import math


def lr_factor(iteration: int, train_cfg: dict, iters_per_epoch: int, total_iters: int) -> float:
    warmup = train_cfg["warmup_iters"]
    factor = 1.0
    if iteration < warmup:
        alpha = iteration / warmup
        factor = train_cfg["warmup_factor"] * (1 - alpha) + alpha
    if train_cfg["schedule"] == "step":
        passed = sum(iteration >= epoch * iters_per_epoch for epoch in train_cfg["lr_steps"])
        return factor * train_cfg["lr_gamma"] ** passed
    return factor * 0.5 * (1 + math.cos(math.pi * min(iteration, total_iters) / max(total_iters, 1)))
