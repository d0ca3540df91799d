"""The U-Net: shapes, output range, widths, and a clear error for unusable sizes."""

from __future__ import annotations

import pytest
import torch

from trainer.model import UNet


@pytest.mark.parametrize("size", [32, 48, 64])
def test_reconstruction_has_the_input_shape_and_range(size):
    net = UNet(base_width=4).eval()
    images = torch.rand(3, 3, size, size)
    with torch.no_grad():
        out = net(images)
    assert out.shape == images.shape
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_paper_size_widths():
    net = UNet()  # the paper's 3-64-128-256-512 net, with a 512 bottleneck
    assert net.stem[0].out_channels == 64
    assert [down[1][0].out_channels for down in net.downs] == [128, 256, 512, 512]
    assert net.head.out_channels == 3


def test_width_trades_size():
    small, paper = UNet(base_width=16), UNet(base_width=64)
    count = lambda net: sum(p.numel() for p in net.parameters())
    assert 12 < count(paper) / count(small) < 20  # weights grow with the square of the width


def test_input_not_divisible_by_16_is_refused():
    with pytest.raises(ValueError, match="40x40 is not divisible by 16"):
        UNet(base_width=4)(torch.rand(1, 3, 40, 40))


def test_learns_from_a_gradient_step():
    torch.manual_seed(0)
    net = UNet(base_width=4)
    images = torch.rand(2, 3, 32, 32)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(net(images), images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
