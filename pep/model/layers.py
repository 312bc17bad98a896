"""Small building blocks shared by the subnetworks."""

from __future__ import annotations

import torch
from torch import nn


def conv_tower(in_channels: int, channels: int, depth: int, groups: int) -> nn.Sequential:
    """`depth` x (3x3 conv, GroupNorm, ReLU): the paper's "four convolution layers with 256
    kernels" per subnetwork (fewer and narrower in the CPU profile)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
                   nn.GroupNorm(min(groups, channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def coord_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(2, H, W): x and y of each position, in [-1, 1] (CoordConv's extra channels)."""
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])


def append_coords(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C + 2, H, W) with the CoordConv channels."""
    coords = coord_grid(x.shape[-2], x.shape[-1], x.device, x.dtype)
    return torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1)


def init_conv_weights(module: nn.Module, std: float = 0.01) -> None:
    """Normal(0, std) weights and zero biases for a head's convs, as SOLO and FCOS do."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
