"""torch.distributed in one place: set-up from torchrun's environment, and the loss normaliser
that makes N processes train exactly the model one process would with the same total batch.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs as rank 0 of 1.
NCCL serves GPUs and gloo the CPU, so the same command runs on a laptop, on 8 GPUs and on
several nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
            from pep.errors import PepError
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


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """The same `pep` command, run by torchrun as `processes` workers on this node."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={processes}", "-m", "pep.cli", *argv]


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
