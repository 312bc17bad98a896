"""Semantics perceiving (Fig. 2, "perceiving"; Eq. 1-2).

Per level, the feature is resampled to an S x S grid. A category tower predicts, per cell, the
class of the instance whose centre region covers it; a descriptor tower (with CoordConv
channels) predicts a D-dimensional descriptor per cell. Cells of high class confidence become
the *original instance descriptors*. Targets are SOLOv2's: the cell of an instance's centre of
mass plus a centre region of `center_radius` x half its box, at most 3 x 3 cells, on the levels
whose scale range holds sqrt(w * h); smaller instances win collisions; crowds are not instances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from pep.distributed import mean_divisor
from pep.model.descriptors import Descriptors
from pep.model.layers import append_coords, conv_tower, init_conv_weights

PRIOR_PROB = 0.01  # initial foreground probability of a sigmoid classifier (RetinaNet, SOLO)


@dataclass
class LevelTargets:
    """Per-cell targets of one image, all levels flattened in order (cells = sum of S^2)."""

    labels: torch.Tensor     # (cells,) int64: class, or -1 for background
    gt_index: torch.Tensor   # (cells,) int64: instance index, or -1
    centres: torch.Tensor    # (G, L, 2) int64: instance g's centre cell (y, x) on level l, -1 if off-level


class SemanticsPerceiving(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, grids: list[int],
                 scale_ranges: list[list[float]], channels: int, convs: int, norm_groups: int,
                 descriptor_dim: int, cfg: dict):
        super().__init__()
        self.num_classes = num_classes
        self.grids = list(grids)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.cfg = cfg
        self.sigmoid = cfg["loss"] == "focal"  # focal: C sigmoid outputs; else C+1 softmax
        out = num_classes if self.sigmoid else num_classes + 1
        self.category_tower = conv_tower(in_channels, channels, convs, norm_groups)
        self.category_out = nn.Conv2d(channels, out, 3, padding=1)
        self.descriptor_tower = conv_tower(in_channels + 2, channels, convs, norm_groups)
        self.descriptor_out = nn.Conv2d(channels, descriptor_dim, 3, padding=1)
        init_conv_weights(self)
        if self.sigmoid:
            nn.init.constant_(self.category_out.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        # where each flattened cell lives: level, y, x
        level, ys, xs = [], [], []
        for l, s in enumerate(self.grids):
            yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            level.append(torch.full((s * s,), l))
            ys.append(yy.reshape(-1))
            xs.append(xx.reshape(-1))
        self.register_buffer("cell_level", torch.cat(level), persistent=False)
        self.register_buffer("cell_y", torch.cat(ys), persistent=False)
        self.register_buffer("cell_x", torch.cat(xs), persistent=False)
        offsets = [0]
        for s in self.grids:
            offsets.append(offsets[-1] + s * s)
        self.level_offsets = offsets

    def forward(self, level_feats: list[torch.Tensor]):
        """-> semantic context [(B, channels, S, S)] (the category tower's output, which
        excavating reads too), class logits (B, cells, K), descriptors (B, cells, D)."""
        context, logits, descs = [], [], []
        for x, s in zip(level_feats, self.grids):
            g = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            semantic = self.category_tower(g)
            context.append(semantic)
            logits.append(self.category_out(semantic).flatten(2).transpose(1, 2))
            d = self.descriptor_out(self.descriptor_tower(append_coords(g)))
            descs.append(d.flatten(2).transpose(1, 2))
        return context, torch.cat(logits, 1), torch.cat(descs, 1)

    def class_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., K) logits -> (..., C) class probabilities (background dropped)."""
        if self.sigmoid:
            return logits.sigmoid()
        return logits.softmax(-1)[..., : self.num_classes]

    # --- targets ---

    @torch.no_grad()
    def targets(self, targets: list[dict], image_size: tuple[int, int]) -> list[LevelTargets]:
        """SOLOv2's assignment for each image of a batch; `image_size` is the padded (H, W).

        Computed for the whole batch at once: instances are padded to the largest count per
        image (padding never wins a cell), so the work is a few tensor ops per level.
        """
        device = self.cell_level.device
        counts = [len(t["masks"]) for t in targets]
        B, G = len(targets), max(counts, default=0)
        H, W = image_size
        scale = torch.full((B, max(G, 1)), torch.inf, device=device)
        box_h, box_w, mass_y, mass_x = (torch.zeros(B, max(G, 1), device=device) for _ in range(4))
        labels_in = torch.zeros(B, max(G, 1), dtype=torch.int64, device=device)
        if G:
            real = torch.arange(G, device=device)[None] < torch.tensor(counts, device=device)[:, None]
            boxes = torch.cat([t["boxes"] for t in targets]).to(device)
            my, mx = centre_of_mass(torch.cat([t["masks"] for t in targets]).to(device))
            box_w[real], box_h[real] = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            scale[real] = (box_w[real] * box_h[real]).clamp(min=0).sqrt()
            mass_y[real], mass_x[real] = my, mx
            labels_in[real] = torch.cat([t["labels"] for t in targets]).to(device)
        half_h = 0.5 * box_h * self.cfg["center_radius"]
        half_w = 0.5 * box_w * self.cfg["center_radius"]
        labels, owners, centres = [], [], []
        for s, (lo, hi) in zip(self.grids, self.scale_ranges):
            in_level = (scale >= lo) & (scale <= hi)  # (B, G); padding is inf: never
            cy = (mass_y / H * s).long().clamp(0, s - 1)
            cx = (mass_x / W * s).long().clamp(0, s - 1)
            top = torch.maximum(((mass_y - half_h) / H * s).long().clamp(0, s - 1), cy - 1)
            bottom = torch.minimum(((mass_y + half_h) / H * s).long().clamp(0, s - 1), cy + 1)
            left = torch.maximum(((mass_x - half_w) / W * s).long().clamp(0, s - 1), cx - 1)
            right = torch.minimum(((mass_x + half_w) / W * s).long().clamp(0, s - 1), cx + 1)
            ys = torch.arange(s, device=device)[None, None, :, None]
            xs = torch.arange(s, device=device)[None, None, None, :]
            e = (..., None, None)
            covers = (in_level[e] & (ys >= top[e]) & (ys <= bottom[e])
                      & (xs >= left[e]) & (xs <= right[e]))  # (B, G, S, S)
            # where centre regions collide, the smallest instance wins
            best, winner = torch.where(covers, scale[e], torch.inf).min(1)  # (B, S, S)
            assigned = torch.isfinite(best)
            owners.append(torch.where(assigned, winner, -1).flatten(1))
            labels.append(torch.where(assigned, labels_in.gather(1, winner.flatten(1)).view_as(winner), -1).flatten(1))
            centres.append(torch.where(in_level[..., None], torch.stack([cy, cx], -1), -1))
        labels_t, owners_t, centres_t = torch.cat(labels, 1), torch.cat(owners, 1), torch.stack(centres, 2)
        return [LevelTargets(labels_t[b], owners_t[b], centres_t[b, : counts[b]]) for b in range(B)]

    # --- loss ---

    def loss(self, logits: torch.Tensor, level_targets: list[LevelTargets]) -> torch.Tensor:
        """Classification over all cells of the batch (Eq. 2), normalised per positive cell
        (focal) or per cell (CE), counted over all processes (`mean_divisor`)."""
        labels = torch.stack([t.labels for t in level_targets])  # (B, cells)
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        positive = flat_labels >= 0
        kind = self.cfg["loss"]
        if kind == "focal":
            onehot = torch.zeros_like(flat_logits)
            onehot[positive, flat_labels[positive]] = 1
            return sigmoid_focal_loss(flat_logits, onehot, alpha=self.cfg["focal_alpha"],
                                      gamma=self.cfg["focal_gamma"], reduction="sum") \
                / mean_divisor(positive.sum(), logits.device)
        target = torch.where(positive, flat_labels, self.num_classes)  # background is class C
        per_cell = F.cross_entropy(flat_logits.float(), target, reduction="none")
        if kind == "ce":
            return per_cell.sum() / mean_divisor(len(per_cell), logits.device)
        # balanced_ce: positives and background weigh half each, whatever their counts
        return 0.5 * per_cell[positive].sum() / mean_divisor(positive.sum(), logits.device) \
            + 0.5 * per_cell[~positive].sum() / mean_divisor((~positive).sum(), logits.device)

    # --- original descriptors ---

    def select_training(self, descs: torch.Tensor, logits: torch.Tensor,
                        level_targets: list[LevelTargets]) -> Descriptors:
        """Positive cells (at most `train_positives_per_image`, a random subset) plus the
        highest-scoring background cells, so that later stages see realistic sets."""
        cap, n_neg = self.cfg["train_positives_per_image"], self.cfg["train_negatives_per_image"]
        scores = self.class_scores(logits.detach()).amax(-1)
        picks = []
        for b, t in enumerate(level_targets):
            pos = torch.nonzero(t.gt_index >= 0).squeeze(1)
            if len(pos) > cap:
                pos = pos[torch.randperm(len(pos), device=pos.device)[:cap]]
            neg_scores = scores[b].masked_fill(t.gt_index >= 0, -1.0)
            neg = torch.topk(neg_scores, min(n_neg, int((t.gt_index < 0).sum()))).indices
            cells = torch.cat([pos, neg])
            picks.append((b, cells, t.labels[cells], torch.zeros(len(cells), device=descs.device),
                          t.gt_index[cells]))
        return self._gather(descs, picks)

    @torch.no_grad()
    def select_inference(self, descs: torch.Tensor, logits: torch.Tensor) -> Descriptors:
        """Point NMS on each level's class maps, then (cell, class) pairs above the score
        threshold, best `max_descriptors` per image (SOLOv2's inference)."""
        scores = self.class_scores(logits)  # (B, cells, C)
        peaks = []
        for l, s in enumerate(self.grids):
            a, b = self.level_offsets[l], self.level_offsets[l + 1]
            maps = scores[:, a:b].transpose(1, 2).reshape(scores.shape[0], -1, s, s)
            peaks.append(point_nms(maps).flatten(2).transpose(1, 2))
        scores = torch.cat(peaks, 1)
        picks = []
        for b in range(scores.shape[0]):
            cell, label = torch.nonzero(scores[b] > self.cfg["score_threshold"], as_tuple=True)
            value = scores[b, cell, label]
            if len(value) > self.cfg["max_descriptors"]:
                top = torch.topk(value, self.cfg["max_descriptors"]).indices
                cell, label, value = cell[top], label[top], value[top]
            picks.append((b, cell, label, value, torch.full_like(cell, -1)))
        return self._gather(descs, picks)

    def _gather(self, descs: torch.Tensor, picks: list) -> Descriptors:
        """Descriptors of the picked cells; picks are (image, cells, labels, scores, gt_index)."""
        parts = []
        for b, cells, labels, value, gt in picks:
            parts.append(Descriptors(
                kernels=descs[b, cells], image=torch.full_like(cells, b), level=self.cell_level[cells],
                cell_y=self.cell_y[cells], cell_x=self.cell_x[cells], labels=labels, scores=value,
                gt_index=gt, mined=torch.zeros(len(cells), dtype=torch.bool, device=descs.device)))
        if not parts:
            return Descriptors.empty(descs.shape[-1], descs.device, descs.dtype)
        return Descriptors.cat(parts)


def centre_of_mass(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, H, W) binary masks -> centre of mass (y, x) in pixels, each (G,)."""
    m = masks.float()
    area = m.sum((1, 2)).clamp(min=1)
    ys = torch.arange(m.shape[1], device=m.device, dtype=m.dtype) + 0.5
    xs = torch.arange(m.shape[2], device=m.device, dtype=m.dtype) + 0.5
    return (m.sum(2) * ys).sum(1) / area, (m.sum(1) * xs).sum(1) / area


def point_nms(heat: torch.Tensor) -> torch.Tensor:
    """Keep a cell's score only where it equals the 2 x 2 max around it (SOLO's point NMS)."""
    hmax = F.max_pool2d(heat, (2, 2), stride=1, padding=1)
    return heat * (hmax[:, :, :-1, :-1] == heat)
