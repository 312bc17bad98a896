"""Batches that do not depend on how training is split or interrupted.

The order of images in epoch e is a permutation drawn from (seed, e), and every image's
random augmentation is drawn from (seed, e, index): so iteration i sees the same global batch,
identically augmented, whether one process or N run it, however many loader workers there
are, and whether or not training was stopped and resumed in between. Each of N processes
takes its 1/N slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class SeededSamples(Dataset):
    """Wraps a dataset so that item (epoch, index) is augmented from its own seed."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
            return self.dataset[index]


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This process's slice of every global batch, from iteration `start` to `total`."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start: int, total: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            from pep.errors import PepError
            raise PepError(f"train.batch_size={global_batch} cannot be split evenly over "
                           f"{world_size} processes")
        if num_samples < global_batch:
            from pep.errors import PepError
            raise PepError(f"the training set has {num_samples} images, fewer than "
                           f"train.batch_size={global_batch}")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.start, self.total = start, total
        self.local = global_batch // world_size
        self.rank = rank
        self.iters_per_epoch = num_samples // global_batch  # the last partial batch is dropped

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, perm = -1, None
        for it in range(self.start, self.total):
            e, k = divmod(it, self.iters_per_epoch)
            if e != epoch:
                epoch, perm = e, self.order(e)
            batch = perm[k * self.global_batch: (k + 1) * self.global_batch]
            mine = batch[self.rank * self.local: (self.rank + 1) * self.local]
            yield [(e, int(i)) for i in mine]
