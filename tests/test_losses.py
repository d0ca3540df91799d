"""The torch training loss measures what the edge's numpy reference measures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edge.method import anomaly_map as reference
from edge.method.preprocess import prepare, read_image
from trainer.losses import RiadLoss, l2_loss, msgms_loss, msgms_map, ssim, ssim_loss

SIZE = 64


@pytest.fixture(scope="module")
def bottle_pair(bottle_dir):
    """A real good bottle and a damaged copy: blurred, with a bright scratch."""
    image = prepare(read_image(bottle_dir / "train" / "good" / "000.png"), (SIZE, SIZE))
    damaged = cv2.GaussianBlur(image.transpose(1, 2, 0), (5, 5), 1.2).transpose(2, 0, 1).copy()
    damaged[:, 20:23, 10:50] = 1.0
    return image, damaged


def numpy_ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Textbook SSIM: Gaussian-weighted local statistics over zero-padded windows."""
    x = np.arange(window) - window // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    r = window // 2

    def local_mean(img):
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(img, r), (window, window))
        return (windows * weights).sum(axis=(-2, -1))

    values = []
    for ca, cb in zip(a.astype(np.float64), b.astype(np.float64)):
        mu_a, mu_b = local_mean(ca), local_mean(cb)
        var_a = local_mean(ca * ca) - mu_a**2
        var_b = local_mean(cb * cb) - mu_b**2
        cov = local_mean(ca * cb) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_msgms_map_matches_edge_reference(bottle_pair):
    image, damaged = bottle_pair
    for other in (image, damaged):
        expected = reference.msgms_map(image, other)
        actual = msgms_map(torch.from_numpy(image)[None], torch.from_numpy(other)[None])[0, 0].numpy()
        np.testing.assert_allclose(actual, expected, atol=1e-5)
    # The damage must show: otherwise the agreement above proves nothing.
    assert reference.msgms_map(image, damaged).min() < 0.5


def test_msgms_loss_is_zero_for_identical_images_and_has_finite_gradients(bottle_pair):
    image, damaged = bottle_pair
    a = torch.from_numpy(image)[None]
    assert msgms_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.from_numpy(damaged)[None].requires_grad_()
    msgms_loss(a, b).backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    # Flat images have zero gradient everywhere: the one place sqrt could blow up.
    flat = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    msgms_loss(flat, torch.zeros(1, 3, 32, 32)).backward()
    assert torch.isfinite(flat.grad).all()


def test_ssim_matches_numpy_ssim(bottle_pair):
    image, damaged = bottle_pair
    expected = numpy_ssim(image, damaged)
    actual = ssim(torch.from_numpy(image)[None], torch.from_numpy(damaged)[None]).item()
    assert actual == pytest.approx(expected, abs=1e-5)
    assert expected < 0.95  # the damage is visible to SSIM
    assert ssim_loss(torch.from_numpy(image)[None], torch.from_numpy(image)[None]).item() == pytest.approx(0, abs=1e-5)


def test_riad_loss_is_the_weighted_sum_of_its_terms(bottle_pair):
    image, damaged = bottle_pair
    a, b = torch.from_numpy(image)[None], torch.from_numpy(damaged)[None]
    assert l2_loss(b, a).item() == pytest.approx(float(((image - damaged) ** 2).mean()), rel=1e-5)
    terms = l2_loss(b, a) + 2.0 * msgms_loss(b, a) + 0.5 * ssim_loss(b, a)
    assert RiadLoss(w_gms=2.0, w_ssim=0.5)(b, a).item() == pytest.approx(terms.item(), rel=1e-6)


def test_per_channel_loss_compares_each_channel_as_the_colour_map_does(bottle_pair):
    image, damaged = bottle_pair
    a, b = torch.from_numpy(image)[None], torch.from_numpy(damaged)[None]
    for c in (reference.GMS_C, 0.02):
        colour_map = reference.raw_anomaly_map(image, damaged[None], reference.MapSpec(c=c, per_channel=True))
        assert msgms_loss(b, a, c, per_channel=True).item() == pytest.approx(float(colour_map.mean()), rel=1e-4)
    # A change in one channel that leaves the grey image alone counts only per channel.
    swapped = image[[1, 0, 2]].copy()
    grey_equal = torch.from_numpy(swapped)[None]
    assert msgms_loss(grey_equal, a).item() == pytest.approx(0.0, abs=1e-6)
    assert msgms_loss(grey_equal, a, per_channel=True).item() > 0.01


def test_a_run_whose_loss_follows_the_map_measures_c_and_channels_on_its_images(bottle_pair):
    from trainer.train import TrainConfig, build_loss

    colour = np.stack([bottle_pair[0], bottle_pair[1]])
    grey = np.repeat(colour.mean(axis=1, keepdims=True), 3, axis=1)
    paper = build_loss(TrainConfig(), colour)
    assert (paper.gms_c, paper.per_channel) == (reference.GMS_C, False)
    channels = build_loss(TrainConfig(loss_gms="channels"), colour)
    assert (channels.gms_c, channels.per_channel) == (reference.GMS_C, True)
    for images, per_channel in ((colour, True), (grey, False)):
        loss = build_loss(TrainConfig(loss_gms="map"), images)
        spec = reference.MapSpec(per_channel=per_channel)
        assert (loss.gms_c, loss.per_channel) == (pytest.approx(reference.gms_constant(images, spec)), per_channel)
        assert loss.gms_c != reference.GMS_C
