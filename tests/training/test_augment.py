"""Tests of training/data/augment.py: multi-crop shapes, reproducibility, ranges, and each op on constructed images."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from training.data.augment import (
    DINOMultiCrop,
    ViewAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    msad_view,
    normalize,
    random_resized_crop_params,
    resized_crop,
    rgb_to_hsv,
    sample_generator,
    solarize,
    to_grayscale,
)

MEAN, STD = (0.15590523, 0.15850738, 0.10111853), (0.14238988, 0.11567883, 0.09106720)  # docs/xstars.md §5 README pool


def _image(c: int = 3, h: int = 120, w: int = 150, seed: int = 0) -> torch.Tensor:
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- pipelines
def test_multicrop_shapes_and_normalisation() -> None:
    crops = DINOMultiCrop(MEAN, STD, local_crops_number=3)(_image(), _gen())
    assert crops.__len__() == 5 and DINOMultiCrop(MEAN, STD).n_crops == 10
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 3
    assert all(c.dtype == torch.float32 for c in crops)
    for c in crops:  # un-normalised values lie in [0, 1]
        raw = c * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
        assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6


def test_multicrop_is_reproducible() -> None:
    mc, img = DINOMultiCrop(MEAN, STD, local_crops_number=2), _image()
    a, b = mc(img, sample_generator(0, 3, 17)), mc(img, sample_generator(0, 3, 17))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = mc(img, sample_generator(0, 3, 18))
    assert not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="non-negative"):
        sample_generator(0, -1, 0)


def test_uint8_input_and_other_channel_counts() -> None:
    img = (_image() * 255).round().to(torch.uint8)
    view = ViewAugmentation(32, (1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0)
    out = view(img[:, :64, :64], _gen())
    assert out.dtype == torch.float32 and out.max() <= 1.0
    four = DINOMultiCrop((0.5,) * 4, (0.2,) * 4, local_crops_number=1)(_image(4), _gen())
    assert [tuple(c.shape) for c in four] == [(4, 224, 224)] * 2 + [(4, 96, 96)]
    with pytest.raises(ValueError, match="channels"):
        DINOMultiCrop(MEAN, STD)(_image(4), _gen())


def test_view_probabilities() -> None:
    """Each coin is drawn per view: solarise p 0.2 on an image that solarising changes, over 400 draws."""
    img = torch.full((3, 8, 8), 0.9)
    view = ViewAugmentation(8, (1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0, solarize_p=0.2)
    g = _gen(5)
    hits = sum(bool(torch.allclose(view(img, g), torch.full_like(img, 0.1))) for _ in range(400))
    assert 50 <= hits <= 110  # binomial(400, 0.2): mean 80, sd 8
    recipes = DINOMultiCrop(MEAN, STD).views
    assert [(r.size_px, r.scale, r.blur_p, r.solarize_p) for r in recipes[:3]] == [
        (224, (0.4, 1.0), 1.0, 0.0), (224, (0.4, 1.0), 0.1, 0.2), (96, (0.05, 0.4), 0.5, 0.0)]


def test_msad_view_modes() -> None:
    img = _image(h=64, w=64)
    joint = msad_view(img, MEAN, STD)
    assert joint.shape == (3, 224, 224)
    raw = joint * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    torch.testing.assert_close(raw.mean(dim=(1, 2)), img.mean(dim=(1, 2)), atol=2e-3, rtol=0)
    sm, ss = (0.27, 0.28, 0.18), (0.17, 0.15, 0.13)
    per = msad_view(img, MEAN, STD, normalization="per_sensor", sensor_mean=sm, sensor_std=ss)
    double = msad_view(img, MEAN, STD, normalization="double", sensor_mean=sm, sensor_std=ss)
    torch.testing.assert_close(per, normalize(raw, sm, ss), atol=1e-5, rtol=0)
    torch.testing.assert_close(double, normalize(joint, sm, ss))
    with pytest.raises(ValueError, match="sensor_mean"):
        msad_view(img, MEAN, STD, normalization="double")


# ---------------------------------------------------------------------------------------------------- single ops
def test_random_resized_crop_params_respect_scale_and_ratio() -> None:
    g = _gen(1)
    for scale in ((0.4, 1.0), (0.05, 0.4)):
        for _ in range(200):
            top, left, h, w = random_resized_crop_params(200, 300, scale, g)
            assert 0 <= top <= 200 - h and 0 <= left <= 300 - w
            assert scale[0] - 0.02 <= h * w / 60000 <= scale[1] + 0.02
            assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # impossible request (a 1000:1 strip, whole area) → centre crop with the ratio clamped to 4/3
    assert random_resized_crop_params(3, 3000, (1.0, 1.0), g) == (0, 1498, 3, 4)


def test_resize_crop_matches_pil() -> None:
    pil = pytest.importorskip("PIL.Image")
    img = _image(1, 150, 130)
    ref = np.asarray(pil.fromarray(img[0, 10:110, 20:120].numpy(), mode="F").resize((96, 96), pil.BICUBIC))
    ours = resized_crop(img, 10, 20, 100, 100, 96)[0].numpy()
    inside = (ref >= 0) & (ref <= 1)  # ours is clipped to [0, 1] like 8-bit PIL images
    assert np.abs(ours - ref)[inside].max() < 1e-4 and np.all((ours >= 0) & (ours <= 1))
    torch.testing.assert_close(resized_crop(img, 10, 20, 100, 100, 100), img[:, 10:110, 20:120])


def test_colour_ops_on_constructed_images() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 4, 4).clone()
    torch.testing.assert_close(to_grayscale(red), torch.full((3, 4, 4), 0.299))
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 4, 4))
    torch.testing.assert_close(adjust_saturation(red, 0.0), to_grayscale(red))
    img = _image(h=16, w=16)
    torch.testing.assert_close(adjust_brightness(img, 0.5), img * 0.5)
    assert adjust_brightness(img, 3.0).max() == 1.0
    flat = adjust_contrast(img, 0.0)
    lum = (img * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0).mean()
    torch.testing.assert_close(flat, torch.full_like(img, float(lum)))
    torch.testing.assert_close(adjust_hue(img, 0.0), img, atol=1e-6, rtol=0)
    gray = to_grayscale(img)
    torch.testing.assert_close(adjust_hue(gray, 0.3), gray, atol=1e-6, rtol=0)
    assert torch.equal(adjust_hue(img[:2], 0.3), img[:2])  # hue skipped for non-RGB
    torch.testing.assert_close(to_grayscale(img[:2]), img[:2].mean(0, keepdim=True).expand(2, -1, -1))


def test_rgb_to_hsv_matches_colorsys() -> None:
    img = _image(h=4, w=5)
    hsv = rgb_to_hsv(img)
    for y in range(4):
        for x in range(5):
            expected = colorsys.rgb_to_hsv(*img[:, y, x].tolist())
            np.testing.assert_allclose(hsv[:, y, x].numpy(), expected, atol=1e-6)


def test_gaussian_blur() -> None:
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    for sigma in (1.0, 1.3, 2.0):  # a sampled kernel under-spreads below σ ≈ 1 (0.46 for σ = 0.5)
        out = gaussian_blur(impulse, sigma)[0]
        assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
        d2 = (torch.arange(41.0) - 20) ** 2
        var = float((out.sum(0) * d2).sum())
        assert math.sqrt(var) == pytest.approx(sigma, rel=0.02)
    const = torch.full((3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)  # edges replicated: no darkening
    with pytest.raises(ValueError):
        gaussian_blur(const, 0.0)


def test_gaussian_blur_close_to_pil() -> None:
    pil_image = pytest.importorskip("PIL.Image")
    pil_filter = pytest.importorskip("PIL.ImageFilter")
    img = (_image(1, 64, 64) * 255).round()
    for sigma in (0.5, 2.0):
        ref = np.asarray(pil_image.fromarray(img[0].numpy().astype(np.uint8)).filter(pil_filter.GaussianBlur(sigma)))
        ours = gaussian_blur(img, sigma)[0].numpy()
        assert np.abs(ours - ref)[8:-8, 8:-8].mean() < 1.5  # PIL: box approximation, 8-bit rounding


def test_solarize_and_flip() -> None:
    x = torch.tensor([0.0, 0.25, 127 / 255, 128 / 255, 0.75, 1.0]).view(1, 1, -1)
    torch.testing.assert_close(solarize(x), torch.tensor([0.0, 0.25, 127 / 255, 127 / 255, 0.25, 0.0]).view(1, 1, -1))
    ramp = torch.arange(8.0).view(1, 1, 8).expand(3, 8, 8) / 8
    view = ViewAugmentation(8, (1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0, grayscale_p=0)
    torch.testing.assert_close(view(ramp, _gen()), ramp.flip(-1))
