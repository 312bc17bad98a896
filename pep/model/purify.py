"""Instance purifying (Fig. 2, "purifying"; Eq. 5).

All descriptors of an image, original and mined, form a graph. Each is embedded,
z_i = normalize(MLP(I_i)), and the similarity of two is M_ij = sigmoid(a <z_i, z_j> + b) with
a and b learned. Training pushes M towards G_ij = 1 iff i and j belong to the same ground-truth
instance (background descriptors match nothing), with a BCE balanced between the two kinds of
pairs (`train_negatives: ignore` leaves the background descriptors out: at inference such cells
next to an instance predict that instance's mask). At inference, descriptors are grouped greedily by score: each seed takes the
unassigned descriptors of its class whose similarity exceeds `merge_threshold`; a group yields
one descriptor. This replaces Matrix NMS for the `purify` and `pep` variants (or precedes it,
`then_matrix_nms`: the paper never says NMS goes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pep.distributed import mean_divisor
from pep.model.descriptors import Descriptors


class InstancePurifying(nn.Module):
    def __init__(self, descriptor_dim: int, embed_dim: int, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Sequential(nn.Linear(descriptor_dim, embed_dim), nn.ReLU(inplace=True),
                                   nn.Linear(embed_dim, embed_dim))
        # M = sigmoid(a cos + b): start at 0.5 for cos = 0.5, steep enough to separate
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def embedding(self, kernels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(kernels), dim=-1)

    def similarity_logits(self, kernels: torch.Tensor) -> torch.Tensor:
        z = self.embedding(kernels)
        return self.scale * (z @ z.T) + self.bias

    def loss(self, descriptors: Descriptors) -> torch.Tensor:
        """Balanced BCE over the off-diagonal pairs of each image, averaged over the images of
        all processes."""
        losses = []
        z_all = self.embedding(descriptors.kernels)  # one MLP call for the whole batch
        for b in descriptors.image.unique().tolist():
            rows = descriptors.image == b
            if int(rows.sum()) < 2:
                continue
            z, gt = z_all[rows], descriptors.gt_index[rows]
            if self.cfg["train_negatives"] == "ignore":  # pairs of instance descriptors only
                z, gt = z[gt >= 0], gt[gt >= 0]
                if len(gt) < 2:
                    continue
            logits = (self.scale * (z @ z.T) + self.bias).float()
            same = (gt[:, None] == gt[None, :]) & (gt[:, None] >= 0)
            off_diag = ~torch.eye(len(gt), dtype=torch.bool, device=logits.device)
            bce = F.binary_cross_entropy_with_logits(logits, same.float(), reduction="none")
            pos, neg = same & off_diag, ~same & off_diag
            terms = [bce[m].mean() for m in (pos, neg) if m.any()]
            losses.append(sum(terms) / len(terms))
        divisor = mean_divisor(len(losses), descriptors.kernels.device)  # a collective: always
        if not losses:
            return sum(p.sum() for p in self.parameters()) * 0  # keeps the graph for DDP
        return torch.stack(losses).sum() / divisor

    @torch.no_grad()
    def merge(self, d: Descriptors, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, list[list[int]]]:
        """Greedy grouping of one image's descriptors, best score first: each seed takes the
        unassigned descriptors of its class whose similarity exceeds `merge_threshold` (and,
        when `join_mask_iou` > 0, whose binary mask overlaps the seed's by at least that IoU).
        Returns the seeds' row indices into `d` and each group's rows (seed first)."""
        order = torch.argsort(d.scores, descending=True)
        if len(d) <= 1:
            return order, [[int(i)] for i in order]
        s = d.select(order)
        similar = self.similarity_logits(s.kernels).sigmoid() > self.cfg["merge_threshold"]
        similar &= s.labels[:, None] == s.labels[None, :]
        if self.cfg["join_mask_iou"] > 0:
            similar &= mask_iou(masks[order]) >= self.cfg["join_mask_iou"]
        similar = similar.cpu().numpy()
        order_list = order.tolist()
        unassigned = [True] * len(s)
        seeds, groups = [], []
        for i in range(len(s)):
            if not unassigned[i]:
                continue
            members = [i] + [j for j in similar[i].nonzero()[0].tolist() if unassigned[j] and j != i]
            for j in members:
                unassigned[j] = False
            seeds.append(order_list[i])
            groups.append([order_list[j] for j in members])
        return torch.tensor(seeds, device=d.kernels.device, dtype=torch.int64), groups

    def merged_kernels(self, d: Descriptors, groups: list[list[int]]) -> torch.Tensor:
        """One kernel per group: the seed's (`merge_rule: seed`) or the score-weighted mean."""
        if self.cfg["merge_rule"] == "seed":
            return d.kernels[[g[0] for g in groups]]
        kernels = []
        for members in groups:
            idx = torch.tensor(members, device=d.kernels.device)
            w = d.scores[idx] / d.scores[idx].sum().clamp(min=1e-12)
            kernels.append((w[:, None] * d.kernels[idx]).sum(0))
        return torch.stack(kernels)


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """(N, h, w) binary masks -> (N, N) IoU."""
    flat = masks.reshape(len(masks), -1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
