"""From kept descriptors to the final instances: masks, rescoring, Matrix NMS, resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def matrix_nms(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
               kernel: str = "gaussian", sigma: float = 2.0) -> torch.Tensor:
    """SOLOv2's Matrix NMS: decayed scores of masks sorted by descending score.

    masks (N, h, w) binary, labels (N,), scores (N,) sorted descending. Each mask's score decays
    by its worst overlap with a higher-scored mask of its class, compensated by how much that
    mask was itself suppressed: decay_j = min_i f(iou_ij) / f(max_k iou_ki), f = exp(-sigma x^2)
    (gaussian) or 1 - x (linear).
    """
    n = len(scores)
    if n == 0:
        return scores
    flat = masks.reshape(n, -1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    iou = (inter / union.clamp(min=1)).triu(diagonal=1)
    same_class = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    iou = iou * same_class
    compensate = iou.max(0).values[:, None].expand(n, n)  # row i: how much i was suppressed
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou ** 2 - compensate ** 2))
    else:
        decay = (1 - iou) / (1 - compensate).clamp(min=1e-6)
    return scores * decay.min(0).values


def masks_to_image(probs: torch.Tensor, size: tuple[int, int], orig_size: tuple[int, int],
                   stride: int, threshold: float) -> torch.Tensor:
    """(N, h, w) probabilities at 1/stride of the padded batch -> (N, H0, W0) bool at the
    original image size: upsample to the padded input, crop the padding, resize, binarise."""
    if len(probs) == 0:
        return torch.zeros((0, *orig_size), dtype=torch.bool, device=probs.device)
    x = F.interpolate(probs[:, None], scale_factor=stride, mode="bilinear", align_corners=False)
    x = x[:, :, : size[0], : size[1]]
    x = F.interpolate(x, size=orig_size, mode="bilinear", align_corners=False)
    return x[:, 0] > threshold
