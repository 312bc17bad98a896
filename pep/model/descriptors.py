"""Instance descriptors: the objects that flow between the subnetworks of Fig. 2.

Perceiving produces the *original* descriptors, excavating adds *mined* ones, purifying merges
them, and mask learning turns each into a mask. They are kept as one flat set over the batch,
each row knowing its image, level and grid cell, so that every stage works on whole tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Descriptors:
    kernels: torch.Tensor    # (N, D): the descriptor; also the 1x1 kernel of its mask
    image: torch.Tensor      # (N,) int64: index of the image in the batch
    level: torch.Tensor      # (N,) int64: semantics level it sits on
    cell_y: torch.Tensor     # (N,) int64: grid cell on that level
    cell_x: torch.Tensor     # (N,) int64
    labels: torch.Tensor     # (N,) int64: class (contiguous), -1 when unknown (training negatives)
    scores: torch.Tensor     # (N,) float: confidence (inference); 0 in training
    gt_index: torch.Tensor   # (N,) int64: ground-truth instance it belongs to in its image, -1 none
    mined: torch.Tensor      # (N,) bool: made by excavating rather than perceived

    def __len__(self) -> int:
        return self.kernels.shape[0]

    def select(self, index: torch.Tensor) -> "Descriptors":
        """Rows by boolean mask or integer index."""
        return Descriptors(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: list["Descriptors"]) -> "Descriptors":
        parts = [p for p in parts if p is not None]
        return Descriptors(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                              for f in fields(Descriptors)})

    @staticmethod
    def empty(dim: int, device=None, dtype=torch.float32) -> "Descriptors":
        long = torch.zeros(0, dtype=torch.int64, device=device)
        return Descriptors(torch.zeros(0, dim, device=device, dtype=dtype), long, long, long, long,
                           long, torch.zeros(0, device=device), long,
                           torch.zeros(0, dtype=torch.bool, device=device))
