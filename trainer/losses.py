"""RIAD training loss: L = w_l2 * L2 + w_gms * L_MSGMS + w_ssim * L_SSIM (paper: all weights 1).

The MSGMS here is the torch twin of edge.method.anomaly_map.msgms_map, written with the same
conventions (channel mean, Prewitt / 3 with zero padding, c = 0.0026, 2x2 average
pyramid, half-pixel bilinear upsampling), so the net is trained on the very similarity
the edge box scores with; tests/test_losses.py holds the two to 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.method.anomaly_map import GMS_C, PYRAMID_LEVELS

# Prewitt kernels / 3 as cross-correlation weights: gx = left - right, gy = top - bottom,
# the signs of edge.method.anomaly_map.prewitt_magnitude (a magnitude ignores them anyway).
_PREWITT_X = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
_PREWITT = torch.stack([_PREWITT_X, _PREWITT_X.T])[:, None]  # (2, 1, 3, 3)
# sqrt has an infinite slope at 0 (flat image regions); this keeps gradients finite
# and moves the magnitude by at most 1e-6, far below c.
_SQRT_EPS = 1e-12

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# Standard SSIM constants for data in [0, 1]: (0.01 L)^2 and (0.03 L)^2 with L = 1.
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def prewitt_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) gradient magnitude, zero padded as conv2d padding=1."""
    g = F.conv2d(gray, _PREWITT.to(gray), padding=1)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2 + _SQRT_EPS)


def gms(gray_a: torch.Tensor, gray_b: torch.Tensor, c: float = GMS_C) -> torch.Tensor:
    ga, gb = prewitt_magnitude(gray_a), prewitt_magnitude(gray_b)
    return (2.0 * ga * gb + c) / (ga * ga + gb * gb + c)


def msgms_map(a: torch.Tensor, b: torch.Tensor, levels: int = PYRAMID_LEVELS, c: float = GMS_C) -> torch.Tensor:
    """(N, 1, H, W) multi-scale GMS of two (N, C, H, W) batches; 1 = identical gradients."""
    a, b = a.mean(dim=1, keepdim=True), b.mean(dim=1, keepdim=True)
    size = a.shape[-2:]
    total = torch.zeros_like(a)
    for level in range(levels):
        if level:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        total = total + F.interpolate(gms(a, b, c), size=size, mode="bilinear", align_corners=False)
    return total / levels


def msgms_loss(a: torch.Tensor, b: torch.Tensor, c: float = GMS_C, per_channel: bool = False) -> torch.Tensor:
    """1 - MSGMS averaged over pixels: of the grey images (the paper's), or with `per_channel`
    of each colour channel alone, as the map compares a colour part (MapSpec.per_channel)."""
    if per_channel:
        a, b = a.flatten(0, 1)[:, None], b.flatten(0, 1)[:, None]
    return (1.0 - msgms_map(a, b, c=c)).mean()


def _gaussian_window(channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(x * x) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = torch.outer(g, g).to(like)
    return window.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over channels and pixels of two (N, C, H, W) batches in [0, 1].

    Local statistics use an 11x11 Gaussian window (sigma 1.5) with zero padding, the
    border rule of the RIAD reference code, so the output keeps the input's size.
    """
    channels = a.shape[1]
    window = _gaussian_window(channels, a)

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=SSIM_WINDOW // 2, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (numerator / denominator).mean()


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(a, b)


def l2_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a, b)


class RiadLoss(nn.Module):
    def __init__(self, w_gms: float = 1.0, w_ssim: float = 1.0, w_l2: float = 1.0, gms_c: float = GMS_C,
                 per_channel: bool = False):
        super().__init__()
        self.w_gms, self.w_ssim, self.w_l2 = w_gms, w_ssim, w_l2
        self.gms_c, self.per_channel = gms_c, per_channel

    def forward(self, reconstruction: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        return (
            self.w_l2 * l2_loss(reconstruction, original)
            + self.w_gms * msgms_loss(reconstruction, original, self.gms_c, self.per_channel)
            + self.w_ssim * ssim_loss(reconstruction, original)
        )
