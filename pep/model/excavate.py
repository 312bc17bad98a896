"""Object excavating (Fig. 2, "excavating"; Eq. 3-4).

Each original descriptor looks at the (2r+1)^2 window of its level's grid feature around its
cell and predicts (a) a map of the centres of *other* instances in that window (Eq. 3) and (b)
a class at each such key pixel (Eq. 4). For every key pixel a new descriptor is made from the
original one with the key pixel's coordinates appended and passed through a small MLP: the 1x1
reading of the paper's "copy + CoordConv + conv". The paper's conv layers run over a map, so
they see the key pixel's surroundings; the 1x1 reading with coordinates alone never does, and
the mechanism report measured that such descriptors match only the hidden instances the
originals already find. So `descriptor_inputs` may add: the excavating head's own features at
the key pixel (`coords_and_key_cell`); those and each channel's maximum over the window
(`coords_and_window`: a hidden instance's centre is covered by the object in front of it, and
what shows of it lies elsewhere); or the general (mask) feature's mean over the window's pixels
that the parent's own mask leaves uncovered (`coords_and_uncovered`).

The window is read from the *semantic context* of perceiving (its category tower's output on
the level's grid), which already says what lies where; each original descriptor adds a
projection of itself and of the window's relative coordinates (a concatenation followed by a
1x1 conv is exactly this sum), and 1x1 convs predict the two maps (CondInst style). All
per-window work is 1x1, so excavating stays cheap however many originals there are.

Training uses teacher forcing: key pixels are the true centres of other instances, plus a few
predicted false peaks as background (`detach_inputs`: these losses train excavating alone, not
the category tower nor the parent kernels). Inference takes predicted peaks above
`key_threshold`, scored as `mined_score` says; `skip_original_cells` drops those that land on a
cell where perceiving already has a descriptor of the same class.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from pep.distributed import mean_divisor
from pep.model.descriptors import Descriptors
from pep.model.layers import init_conv_weights
from pep.model.perceive import PRIOR_PROB, LevelTargets


class ObjectExcavating(nn.Module):
    def __init__(self, in_channels: int, descriptor_dim: int, channels: int,
                 num_classes: int, grids: list[int], cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.radius = r = cfg["window_radius"]
        self.num_classes = num_classes
        self.grids = list(grids)
        self.window_proj = nn.Conv2d(in_channels, channels, 1)
        self.descriptor_proj = nn.Linear(descriptor_dim, channels, bias=False)
        self.coord_proj = nn.Conv2d(2, channels, 1, bias=False)
        hidden: list[nn.Module] = [nn.ReLU(inplace=True)]
        for _ in range(cfg["convs"] - 1):
            hidden += [nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)]
        self.hidden = nn.Sequential(*hidden)
        self.centre_out = nn.Conv2d(channels, 1, 1)
        self.class_out = nn.Conv2d(channels, num_classes + 1, 1)  # + background
        # new descriptor = original + MLP([original, key pixel's absolute (x, y), relative (dx, dy),
        # what descriptor_inputs adds]); models saved before the setting existed read coordinates alone
        inputs = cfg.get("descriptor_inputs", "coords")
        self.reads_key_cell = inputs in ("coords_and_key_cell", "coords_and_window")
        self.reads_window = inputs == "coords_and_window"
        self.reads_uncovered = inputs == "coords_and_uncovered"
        extra = channels * (int(self.reads_key_cell) + int(self.reads_window)) \
            + descriptor_dim * int(self.reads_uncovered)
        self.make_descriptor = nn.Sequential(nn.Linear(descriptor_dim + 4 + extra, descriptor_dim), nn.ReLU(inplace=True),
                                             nn.Linear(descriptor_dim, descriptor_dim))
        init_conv_weights(self)
        nn.init.constant_(self.centre_out.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        # the MLP learns a residual on the copied descriptor: it starts as an exact copy
        self.make_descriptor[0].reset_parameters()
        nn.init.zeros_(self.make_descriptor[2].weight)
        k = 2 * r + 1
        off = torch.arange(k) - r
        rel = torch.stack(torch.meshgrid(off, off, indexing="ij"))  # (2, K, K): dy, dx
        self.register_buffer("offsets", rel, persistent=False)
        self.register_buffer("rel_coords", torch.stack([rel[1], rel[0]]).float() / r, persistent=False)

    def forward(self, context: list[torch.Tensor], originals: Descriptors):
        """context: perceiving's [(B, channels, S, S)] per level.
        -> centre logits (N, K, K), class logits (N, C + 1, K, K), valid (N, K, K) bool, and the
        head's last features per window cell (N, K*K, channels), which mined descriptors may read."""
        # the 1x1 projection commutes with cutting windows: run it once per grid, not per window
        windows, valid = self._windows([self.window_proj(c) for c in context], originals)  # (N, K*K, ch)
        # every later layer is 1x1 too: a matrix product over the N * K * K window cells, laid out
        # cell by cell (a 7x7 convolution input per window costs several times more on a CPU)
        coord = _per_cell(self.coord_proj, self.rel_coords.flatten(1).T.to(windows.dtype))
        x = windows + self.descriptor_proj(originals.kernels)[:, None, :] + coord
        for layer in self.hidden:
            x = _per_cell(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
        n, k = len(originals), 2 * self.radius + 1
        centre = _per_cell(self.centre_out, x).view(n, k, k)
        classes = _per_cell(self.class_out, x)  # (N, K*K, C + 1)
        if self.reads_window:  # cells outside the grid hold nothing the window's maximum may read
            x = x * valid.view(n, k * k, 1)
        return centre, classes.transpose(1, 2).unflatten(2, (k, k)), valid, x

    def _windows(self, context: list[torch.Tensor], d: Descriptors):
        """Each descriptor's (2r+1)^2 window of its level's map, (N, K*K, channels), zero
        outside the grid, and which window cells lie inside it, (N, K, K)."""
        r, k = self.radius, 2 * self.radius + 1
        channels = context[0].shape[1]
        out = context[0].new_zeros((len(d), k * k, channels))
        ys = d.cell_y[:, None] + self.offsets[0].reshape(1, -1)  # (N, K*K) unpadded coords
        xs = d.cell_x[:, None] + self.offsets[1].reshape(1, -1)
        sizes = torch.tensor(self.grids, device=d.level.device)[d.level][:, None]
        valid = (ys >= 0) & (ys < sizes) & (xs >= 0) & (xs < sizes)
        for l, feat in enumerate(context):
            rows = torch.nonzero(d.level == l).squeeze(1)
            if len(rows) == 0:
                continue
            padded = F.pad(feat, (r, r, r, r)).permute(0, 2, 3, 1)  # (B, S+2r, S+2r, C)
            out[rows] = padded[d.image[rows, None], ys[rows] + r, xs[rows] + r]  # (n, K*K, C)
        return out, valid.view(-1, k, k)

    # --- training ---

    def training_step(self, context, originals: Descriptors, level_targets: list[LevelTargets],
                      gt_labels: torch.Tensor, gt_offsets: torch.Tensor, feature: torch.Tensor | None = None):
        """Losses (centre map, key-pixel class) and the mined descriptors (teacher forcing).
        `gt_labels` are all images' instance labels concatenated, image b's from `gt_offsets[b]`."""
        if self.cfg["detach_inputs"]:  # excavating's losses stop at the category tower and the parent kernel
            context = [c.detach() for c in context]
            originals = dataclasses.replace(originals, kernels=originals.kernels.detach())
        centre_logits, class_logits, valid, features = self(context, originals)
        target, key_gt = self._centre_targets(originals, level_targets, centre_logits.shape[-1])
        positive = target > 0
        if self.cfg["loss"] == "focal":
            loss_centre = sigmoid_focal_loss(centre_logits[valid], target[valid], reduction="sum") \
                / mean_divisor(positive.sum(), target.device)
        else:
            loss_centre = F.binary_cross_entropy_with_logits(centre_logits[valid], target[valid], reduction="sum") \
                / mean_divisor(valid.sum(), target.device)

        # key pixels: true centres (class = their instance's) + the strongest false peaks (background)
        key_n, key_y, key_x = torch.nonzero(positive, as_tuple=True)
        key_g = key_gt[key_n, key_y, key_x]
        key_label = gt_labels[gt_offsets[originals.image[key_n]] + key_g]
        cap = self.cfg["max_mined_per_image"]
        keep = _cap_per_image(originals.image[key_n], cap)
        key_n, key_y, key_x, key_g, key_label = (t[keep] for t in (key_n, key_y, key_x, key_g, key_label))
        false_n, false_y, false_x = self._false_peaks(centre_logits.detach(), positive | ~valid, originals.image)
        all_n = torch.cat([key_n, false_n])
        all_y, all_x = torch.cat([key_y, false_y]), torch.cat([key_x, false_x])
        cls_target = torch.cat([key_label, torch.full_like(false_n, self.num_classes)])
        cls_logits = class_logits[all_n, :, all_y, all_x]
        loss_class = F.cross_entropy(cls_logits.float(), cls_target, reduction="sum") \
            / mean_divisor(len(all_n), target.device) + class_logits.sum() * 0  # keeps the graph when empty

        mined = self._mine(originals, features, feature, all_n, all_y, all_x,
                           labels=torch.cat([key_label, torch.full_like(false_n, -1)]),
                           scores=torch.zeros(len(all_n), device=centre_logits.device),
                           gt_index=torch.cat([key_g, torch.full_like(false_n, -1)]))
        return mined, loss_centre, loss_class

    @torch.no_grad()
    def _centre_targets(self, d: Descriptors, level_targets: list[LevelTargets], k: int):
        """1 at the window cell of every *other* instance's centre on the descriptor's level (with
        `targets: hidden`, only of the instances that own no grid cell: the paper's Eq. 3 marks
        all, most of which perceiving already has a descriptor for)."""
        r = self.radius
        target = torch.zeros((len(d), k, k), device=d.kernels.device)
        key_gt = torch.full((len(d), k, k), -1, dtype=torch.int64, device=d.kernels.device)
        for b, t in enumerate(level_targets):
            rows = torch.nonzero(d.image == b).squeeze(1)
            if len(rows) == 0 or len(t.centres) == 0:
                continue
            c = t.centres[:, d.level[rows]]  # (G, n, 2): each instance's centre on each row's level
            dy = c[..., 0] - d.cell_y[rows][None]
            dx = c[..., 1] - d.cell_x[rows][None]
            g_ids = torch.arange(len(t.centres), device=c.device)[:, None]
            hit = (c[..., 0] >= 0) & (dy.abs() <= r) & (dx.abs() <= r) & (g_ids != d.gt_index[rows][None])
            if self.cfg["targets"] == "hidden":
                owned = torch.zeros(len(t.centres), dtype=torch.bool, device=c.device)
                owned[t.gt_index[t.gt_index >= 0]] = True
                hit &= ~owned[:, None]
            g, n = torch.nonzero(hit, as_tuple=True)
            target[rows[n], dy[g, n] + r, dx[g, n] + r] = 1
            key_gt[rows[n], dy[g, n] + r, dx[g, n] + r] = g
        return target, key_gt

    def _false_peaks(self, centre_logits, excluded, image):
        """Per image, the `false_peaks_per_image` most confident cells that are no centre."""
        n_false = self.cfg["false_peaks_per_image"]
        empty = centre_logits.new_zeros(0, dtype=torch.int64)
        if n_false == 0 or len(centre_logits) == 0:
            return empty, empty, empty
        scores = centre_logits.masked_fill(excluded, float("-inf")).flatten(1)  # (N, K*K)
        k = centre_logits.shape[-1]
        picks = []
        for b in image.unique().tolist():
            rows = torch.nonzero(image == b).squeeze(1)
            flat = scores[rows].reshape(-1)
            top = torch.topk(flat, min(n_false, int(torch.isfinite(flat).sum()))).indices
            picks.append(torch.stack([rows[top // (k * k)], (top % (k * k)) // k, top % k]))
        if not picks:
            return empty, empty, empty
        n, y, x = torch.cat(picks, 1)
        return n, y, x

    # --- inference ---

    @torch.no_grad()
    def key_map(self, context, originals: Descriptors):
        """The originals that excavate (the best `max_originals` per image), each one's centre
        probability over its window (N, K, K: 0 outside the grid and on its own cell), class
        logits (N, C + 1, K, K) and features (N, K*K, channels). The mechanism report reads the
        probability at the hidden instances' centres."""
        src = originals.select(_top_per_image(originals.scores, originals.image, self.cfg["max_originals"]))
        if len(src) == 0:
            k = 2 * self.radius + 1
            return (src, context[0].new_zeros((0, k, k)), context[0].new_zeros((0, self.num_classes + 1, k, k)),
                    context[0].new_zeros((0, k * k, self.window_proj.out_channels)))
        centre_logits, class_logits, valid, features = self(context, src)
        prob = centre_logits.sigmoid().masked_fill(~valid, 0)
        prob[:, self.radius, self.radius] = 0  # the original's own cell is its own instance
        return src, prob, class_logits, features

    @torch.no_grad()
    def mine(self, context, originals: Descriptors, feature: torch.Tensor | None = None) -> Descriptors:
        """Predicted key pixels of the best `max_originals` originals per image."""
        src, prob, class_logits, features = self.key_map(context, originals)
        if len(src) == 0:
            return Descriptors.empty(originals.kernels.shape[1], originals.kernels.device, originals.kernels.dtype)
        r, k = self.radius, prob.shape[-1]
        top = torch.topk(prob.flatten(1), min(self.cfg["top_k"], k * k))
        n = torch.arange(len(src), device=prob.device)[:, None].expand_as(top.indices).reshape(-1)
        flat, value = top.indices.reshape(-1), top.values.reshape(-1)
        ok = value > self.cfg["key_threshold"]
        n, flat, value = n[ok], flat[ok], value[ok]
        y, x = flat // k, flat % k
        cls_prob = class_logits[n, :, y, x].softmax(-1)[:, : self.num_classes]
        cls_score, label = cls_prob.max(-1)
        score = {"key": value * cls_score, "parent": src.scores[n] * cls_score,
                 "parent_x_key": src.scores[n] * value * cls_score}[self.cfg["mined_score"]]
        if self.cfg["skip_original_cells"]:  # a key pixel on a same-class original's cell repeats it
            fresh = ~torch.isin(_cell_keys(src.image[n], src.level[n], src.cell_y[n] + y - r,
                                           src.cell_x[n] + x - r, label, self.grids, self.num_classes),
                                _cell_keys(originals.image, originals.level, originals.cell_y,
                                           originals.cell_x, originals.labels, self.grids, self.num_classes))
            n, y, x, label, score = n[fresh], y[fresh], x[fresh], label[fresh], score[fresh]
        return self._mine(src, features, feature, n, y, x, labels=label, scores=score, gt_index=torch.full_like(n, -1))

    def _mine(self, src: Descriptors, features, feature, n, y, x, labels, scores, gt_index) -> Descriptors:
        """New descriptors at window cells (y, x) of originals n (`features`: the head's, per
        window cell, as `forward` returns them; `feature`: the general feature, B x D x h x w)."""
        r = self.radius
        dy, dx = y - r, x - r
        cell_y, cell_x = src.cell_y[n] + dy, src.cell_x[n] + dx
        size = torch.tensor(self.grids, device=n.device, dtype=torch.float32)[src.level[n]]
        absolute = torch.stack([cell_x / (size - 1).clamp(min=1), cell_y / (size - 1).clamp(min=1)], 1) * 2 - 1
        relative = torch.stack([dx, dy], 1).float() / r
        parts = [src.kernels[n], absolute.to(src.kernels.dtype), relative.to(src.kernels.dtype)]
        if self.reads_key_cell:
            parts.append(features[n, y * (2 * r + 1) + x].to(src.kernels.dtype))
        if self.reads_window:  # the strongest response of each channel over the whole window
            parts.append(features[n].amax(1).to(src.kernels.dtype))
        if self.reads_uncovered:
            parts.append(self._uncovered_mean(src, feature, n).to(src.kernels.dtype))
        inputs = torch.cat(parts, 1)
        kernels = src.kernels[n] + self.make_descriptor(inputs)
        return Descriptors(kernels=kernels, image=src.image[n], level=src.level[n],
                           cell_y=cell_y, cell_x=cell_x, labels=labels, scores=scores, gt_index=gt_index,
                           mined=torch.ones(len(n), dtype=torch.bool, device=n.device))

    def _uncovered_mean(self, src: Descriptors, feature: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Per mined row, the general feature's mean over the pixels of its parent's window,
        each weighted by 1 - the parent's mask probability there (M, D). Neither the parent's
        mask nor the feature is trained through it: the mask branch learns as in baseline."""
        feature = feature.detach().float()
        out = feature.new_zeros((len(n), feature.shape[1]))
        h, w = feature.shape[-2:]
        size = torch.tensor(self.grids, device=n.device)[src.level]  # (N,) each original's grid
        for b in src.image[n].unique().tolist():
            parents = torch.unique(n[src.image[n] == b])
            f = feature[b].flatten(1)  # (D, h*w)
            uncovered = 1 - (src.kernels[parents].detach().float() @ f).sigmoid()  # (P, h*w)
            s = size[parents][:, None]
            cell_y = torch.arange(h, device=n.device)[None] * s // h  # (P, h): each pixel row's cell
            cell_x = torch.arange(w, device=n.device)[None] * s // w
            in_y = (cell_y - src.cell_y[parents][:, None]).abs() <= self.radius
            in_x = (cell_x - src.cell_x[parents][:, None]).abs() <= self.radius
            weight = uncovered * (in_y[:, :, None] & in_x[:, None, :]).flatten(1)
            pooled = (weight @ f.T) / weight.sum(1, keepdim=True).clamp(min=1e-6)  # (P, D)
            rows = torch.nonzero(src.image[n] == b).squeeze(1)
            out[rows] = pooled[torch.searchsorted(parents, n[rows])].to(out.dtype)
        return out


def _per_cell(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to cells laid out (..., channels), as the linear layer it is."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def _cell_keys(image, level, y, x, label, grids: list[int], num_classes: int) -> torch.Tensor:
    """One integer per (image, level, cell, class)."""
    s = max(grids)
    return (((image * len(grids) + level) * s + y) * s + x) * num_classes + label


def _top_per_image(scores: torch.Tensor, image: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best-scored rows of each image."""
    keep = []
    for b in image.unique().tolist():
        rows = torch.nonzero(image == b).squeeze(1)
        keep.append(rows[torch.topk(scores[rows], min(k, len(rows))).indices])
    return torch.cat(keep) if keep else image.new_zeros(0)


def _cap_per_image(image: torch.Tensor, cap: int) -> torch.Tensor:
    """A random subset of at most `cap` rows per image (all rows when fewer)."""
    keep = []
    for b in image.unique().tolist():
        rows = torch.nonzero(image == b).squeeze(1)
        if len(rows) > cap:
            rows = rows[torch.randperm(len(rows), device=rows.device)[:cap]]
        keep.append(rows)
    return torch.cat(keep) if keep else image.new_zeros(0)
