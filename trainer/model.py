"""The RIAD inpainting network: a U-Net built from three small blocks.

`UNet(base_width=64, depth=4)` is the paper-size net (3-64-128-256-512-512 channels);
a smaller `base_width` trades accuracy for speed on a CPU or a small Jetson. The
input side must be divisible by 2**depth (16 by default), so every pooled map has
an even side and the decoder's upsampled maps line up with the encoder's skips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv, batch norm, ReLU) twice: the unit of every U-Net level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution, then widen."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Double the resolution, join the encoder's map of that size, then narrow."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Bilinear upsampling rather than transposed convs: no checkerboard artefacts,
        # which the gradient-similarity map would otherwise report as anomalies. A fixed
        # factor of 2 (sides are multiples of 2**depth) exports as a constant-scale Resize.
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) reconstruction in [0, 1]."""

    def __init__(self, base_width: int = 64, depth: int = 4):
        super().__init__()
        self.depth = depth
        # Widths double per level up to 8 x base, as in the 64-...-512 paper net.
        widths = [base_width * 2 ** min(level, 3) for level in range(depth + 1)]
        self.stem = DoubleConv(3, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 3, 1)

    @property
    def size_multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"U-Net input {height}x{width} is not divisible by {self.size_multiple}; "
                f"choose an input size that is a multiple of {self.size_multiple}"
            )
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        # Inputs are RGB in [0, 1] (hidden cells 0), so a sigmoid keeps
        # every reconstruction in the same range as the image it is compared with.
        return torch.sigmoid(self.head(x))
