"""DINO multi-crop augmentation and the MSAD resize-only view (docs/xstars.md §2, §3.1), in plain torch.

Images are float tensors ``[C, H, W]`` with values in [0, 1] (8-bit images divided by 255; ``uint8`` input is
converted that way). Every random draw comes from the ``torch.Generator`` passed in, so a view is a pure function of
(image, generator state): runs are reproducible (the released code drew blur and solarise from an unseeded Python
``random``, bug B11). :func:`sample_generator` derives one generator per (seed, epoch, sample index), which makes the
crops independent of the number of data-loader workers.

Per view (DINO, Caron et al. ICCV 2021; X-STARS uses it unchanged; docs/xstars.md §2):

1. random resized crop: area fraction U(scale), log-uniform aspect ratio in (3/4, 4/3), up to 10 tries, then a
   centre crop; resized with bicubic, antialiased interpolation (PIL-like, cubic a = −0.5) and clipped to [0, 1];
2. horizontal flip, p 0.5;
3. colour jitter with p 0.8: brightness, contrast (factors U(0.6, 1.4)), saturation (U(0.8, 1.2)) and hue (shift
   U(−0.1, 0.1) turns) in a random order, each clipped to [0, 1];
4. grayscale (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B on all channels), p 0.2;
5. Gaussian blur with σ = U(0.1, 2.0) px: p 1.0 on global view 1, 0.1 on global view 2, 0.5 on local views;
6. solarise (values ≥ 128/255 inverted), p 0.2, global view 2 only;
7. normalise ``(x − mean) / std`` per channel.

Differences from the PIL pipeline, all deliberate: no 8-bit quantisation between steps; the blur is an exact
separable Gaussian (kernel ``2·⌈3σ⌉ + 1``, edge pixels replicated) where PIL approximates one with box blurs of
"radius" σ; the hue shift is done in HSV in floating point.

**Other channel counts.** The geometric steps, brightness, blur, solarise and normalise act on every channel. The
colour steps need a luminance: for 3 channels it is the RGB luma above, for any other count the unweighted channel
mean (so contrast blends towards the mean over channels and pixels, saturation towards the per-pixel channel mean,
and grayscale writes the channel mean to every channel; for 1 channel these two are identities). Hue is defined for
RGB only and is skipped for other channel counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = (
    "DINOMultiCrop",
    "ViewAugmentation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "gaussian_blur",
    "hsv_to_rgb",
    "luminance",
    "msad_view",
    "normalize",
    "random_resized_crop_params",
    "resized_crop",
    "rgb_to_hsv",
    "sample_generator",
    "solarize",
    "to_grayscale",
)

MSADNormalization = Literal["joint", "per_sensor", "double"]

#: ITU-R 601-2 luma weights (PIL ``convert("L")``, torchvision grayscale).
LUMA_RGB = (0.299, 0.587, 0.114)
#: Solarise threshold of PIL ``ImageOps.solarize`` (128 of 255), on [0, 1] values.
SOLARIZE_THRESHOLD = 128 / 255
#: Aspect-ratio range of the random resized crop (torchvision/DINO default).
CROP_RATIO = (3 / 4, 4 / 3)
#: Tries before the centre-crop fallback (torchvision/DINO).
CROP_TRIES = 10


# ---------------------------------------------------------------------------------------------------- randomness
def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, sample index) with numpy's SeedSequence (well-mixed, worker-free).

    Raises:
        ValueError: A negative component.
    """
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be non-negative, got {(seed, epoch, index)}")
    state = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _coin(g: torch.Generator, p: float) -> bool:
    """One draw per call, whatever ``p`` (so the stream does not depend on which probabilities are 0 or 1)."""
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


def _randint(g: torch.Generator, high: int) -> int:
    """Integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=g))


def _as_float_image(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1] (or uint8), got {image.dtype}")
    return image


# ---------------------------------------------------------------------------------------------------- geometry
def random_resized_crop_params(
    height_px: int,
    width_px: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """Crop box of a random resized crop: ``(top, left, height, width)`` in pixels.

    Up to 10 tries of area fraction U(scale) and log-uniform aspect ratio (width/height) in ``ratio``; the first box
    that fits is placed uniformly. Otherwise a centre crop with the aspect ratio clamped into ``ratio``.

    Args:
        height_px: Image height H.
        width_px: Image width W.
        scale: Area fraction range, e.g. (0.4, 1.0) for global and (0.05, 0.4) for local views (docs/xstars.md §2).
        generator: Source of randomness.
        ratio: Aspect-ratio range (3/4, 4/3).
    """
    area = height_px * width_px
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_TRIES):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width_px and 0 < h <= height_px:
            return _randint(generator, height_px - h + 1), _randint(generator, width_px - w + 1), h, w
    in_ratio = width_px / height_px
    if in_ratio < ratio[0]:
        w, h = width_px, int(round(width_px / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height_px, int(round(height_px * ratio[1]))
    else:
        h, w = height_px, width_px
    return (height_px - h) // 2, (width_px - w) // 2, h, w


def resized_crop(
    image: torch.Tensor, top: int, left: int, height: int, width: int, size_px: int, mode: str = "bicubic"
) -> torch.Tensor:
    """Crop ``image[:, top:top+height, left:left+width]`` and resize it to ``size_px × size_px`` (antialiased).

    Args:
        image: ``[C, H, W]`` float in [0, 1].
        mode: ``"bicubic"`` (DINO crops) or ``"bilinear"`` (MSAD views).

    Returns:
        ``[C, size_px, size_px]`` float, clipped to [0, 1] (bicubic overshoots; PIL clips to 8 bits).
    """
    crop = image[:, top:top + height, left:left + width]
    if crop.shape[-2:] == (size_px, size_px):
        return crop.clone()
    out = F.interpolate(crop[None], size=(size_px, size_px), mode=mode, antialias=True, align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- colour
def luminance(image: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` → ``[1, H, W]``: RGB luma (0.299, 0.587, 0.114) for 3 channels, channel mean otherwise."""
    if image.shape[0] == 3:
        weights = torch.tensor(LUMA_RGB, dtype=image.dtype, device=image.device)
        return (image * weights[:, None, None]).sum(0, keepdim=True)
    return image.mean(0, keepdim=True)


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """Luminance written to every channel: ``[C, H, W]`` → ``[C, H, W]``."""
    return luminance(image).expand_as(image).clone()


def _blend(image: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * image + (1.0 - factor) * other).clamp_(0.0, 1.0)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``clip(factor · x, 0, 1)`` (factor 0 = black, 1 = unchanged)."""
    return _blend(image, 0.0, factor)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean luminance of the whole image: ``clip(f·x + (1−f)·mean(lum), 0, 1)``."""
    return _blend(image, luminance(image).mean(), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the per-pixel luminance: ``clip(f·x + (1−f)·lum, 0, 1)`` (factor 0 = grayscale)."""
    return _blend(image, luminance(image), factor)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` RGB in [0, 1] → HSV ``[3, H, W]``, hue in turns [0, 1), saturation and value in [0, 1]."""
    r, g, b = image.unbind(0)
    maxc, _ = image.max(0)
    minc, _ = image.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = torch.where(maxc == r, ((g - b) / safe) % 6.0,
                    torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    return torch.stack((h, s, maxc))


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: HSV ``[3, H, W]`` (hue in turns) → RGB ``[3, H, W]``."""
    h, s, v = image.unbind(0)
    # channel n ∈ (5, 3, 1) for (R, G, B): v − v·s·clip(min(k, 4 − k), 0, 1) with k = (n + 6h) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device)[:, None, None]
    k = (n + 6.0 * h) % 6.0
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [−0.5, 0.5]) in HSV; identity for channel counts other than 3.

    Raises:
        ValueError: ``|shift| > 0.5``.
    """
    if abs(shift) > 0.5:
        raise ValueError(f"hue shift must lie in [-0.5, 0.5] turns, got {shift}")
    if image.shape[0] != 3:
        return image
    hsv = rgb_to_hsv(image)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


def color_jitter(
    image: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in a random order, factors U(1 ± x), hue shift U(−hue, hue).

    Defaults are DINO's ColorJitter(0.4, 0.4, 0.2, 0.1) (docs/xstars.md §2). The order is a random permutation of the
    four.
    """
    ops = (
        lambda x, g: adjust_brightness(x, _uniform(g, max(0.0, 1 - brightness), 1 + brightness)),
        lambda x, g: adjust_contrast(x, _uniform(g, max(0.0, 1 - contrast), 1 + contrast)),
        lambda x, g: adjust_saturation(x, _uniform(g, max(0.0, 1 - saturation), 1 + saturation)),
        lambda x, g: adjust_hue(x, _uniform(g, -hue, hue)),
    )
    for i in torch.randperm(4, generator=generator).tolist():
        image = ops[i](image, generator)
    return image


# ---------------------------------------------------------------------------------------------------- filters
def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma_px``; kernel ``2·⌈3σ⌉ + 1``, edges replicated.

    Returns:
        ``[C, H, W]``, same dtype.

    Args:
        image: ``[C, H, W]`` float.
        sigma_px: σ in pixels (> 0); DINO draws PIL's "radius" U(0.1, 2.0), which is σ.

    Raises:
        ValueError: ``sigma_px ≤ 0``.
    """
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    radius = max(1, math.ceil(3.0 * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    # separable blur as two banded matrices (rows: output pixels), replicated edges folded into the first/last columns
    return _blur_matrix(image.shape[-2], kernel, radius) @ image @ _blur_matrix(image.shape[-1], kernel, radius).T


def _blur_matrix(n: int, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """``[n, n]`` matrix M with ``(M x)_i = Σ_k kernel[k] x[clip(i + k − radius, 0, n − 1)]``."""
    rows = torch.arange(n, device=kernel.device)[:, None].expand(n, kernel.numel())
    cols = (rows + torch.arange(-radius, radius + 1, device=kernel.device)).clamp(0, n - 1)
    matrix = torch.zeros(n, n, dtype=kernel.dtype, device=kernel.device)
    return matrix.index_put_((rows, cols), kernel.expand(n, -1), accumulate=True)


def solarize(image: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """Invert values ``≥ threshold`` (``1 − x``), keep the others (PIL ``ImageOps.solarize(128)`` on [0, 1])."""
    return torch.where(image >= threshold, 1.0 - image, image)


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean) / std`` per channel.

    Raises:
        ValueError: ``mean``/``std`` length differs from the channel count, or a non-positive std.
    """
    c = image.shape[0]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for an image of {c} channels")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {list(std)}")
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device)[:, None, None]
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device)[:, None, None]
    return (image - m) / s


# ---------------------------------------------------------------------------------------------------- pipelines
@dataclass(frozen=True)
class ViewAugmentation:
    """Recipe of one augmented view (docs/xstars.md §2); every probability is drawn as one coin per view.

    Attributes:
        size_px: Output side (224 for globals, 96 for locals).
        scale: Area-fraction range of the random resized crop.
        ratio: Aspect-ratio range.
        flip_p: Horizontal-flip probability (0.5).
        jitter_p: Colour-jitter probability (0.8).
        jitter: (brightness, contrast, saturation, hue) strengths (0.4, 0.4, 0.2, 0.1).
        grayscale_p: Grayscale probability (0.2).
        blur_p: Gaussian-blur probability (1.0 global 1, 0.1 global 2, 0.5 locals).
        blur_sigma_px: σ range of the blur (0.1, 2.0).
        solarize_p: Solarise probability (0.2 on global 2, else 0).
    """

    size_px: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = CROP_RATIO
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma_px: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment one ``[C, H, W]`` image in [0, 1] → ``[C, size_px, size_px]`` in [0, 1] (not normalised)."""
        image = _as_float_image(image)
        top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], self.scale, generator,
                                                     self.ratio)
        x = resized_crop(image, top, left, h, w, self.size_px, "bicubic")
        if _coin(generator, self.flip_p):
            x = x.flip(-1)
        if _coin(generator, self.jitter_p):
            x = color_jitter(x, generator, *self.jitter)
        if _coin(generator, self.grayscale_p):
            x = to_grayscale(x)
        if _coin(generator, self.blur_p):
            x = gaussian_blur(x, _uniform(generator, *self.blur_sigma_px))
        if _coin(generator, self.solarize_p):
            x = solarize(x)
        return x


@dataclass(frozen=True)
class DINOMultiCrop:
    """DINO multi-crop: 2 global views (224 px, scale (0.4, 1)) and N local views (96 px, scale (0.05, 0.4)).

    Global view 1 is always blurred; global view 2 is blurred with p 0.1 and solarised with p 0.2; locals are
    blurred with p 0.5 (docs/xstars.md §2). Every view is normalised with the one joint ``mean``/``std`` shared by all
    sensors.

    Attributes:
        mean: Per-channel mean on [0, 1] values (e.g. ``engine/data/xstars_stats.json`` presets).
        std: Per-channel std.
        local_crops_number: N (8).
        global_size_px: Global view side (224).
        local_size_px: Local view side (96; ``crop_size`` in X-STARS).
        global_scale: Area range of global crops.
        local_scale: Area range of local crops.
    """

    mean: Sequence[float]
    std: Sequence[float]
    local_crops_number: int = 8
    global_size_px: int = 224
    local_size_px: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    views: tuple[ViewAugmentation, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std differ in length: {len(self.mean)} vs {len(self.std)}")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number must be ≥ 0, got {self.local_crops_number}")
        global1 = ViewAugmentation(self.global_size_px, self.global_scale, blur_p=1.0)
        global2 = ViewAugmentation(self.global_size_px, self.global_scale, blur_p=0.1, solarize_p=0.2)
        local = ViewAugmentation(self.local_size_px, self.local_scale, blur_p=0.5)
        object.__setattr__(self, "views", (global1, global2) + (local,) * self.local_crops_number)

    @property
    def n_crops(self) -> int:
        """Views per sample: ``2 + local_crops_number``."""
        return len(self.views)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """Augment one image.

        Args:
            image: ``[C, H, W]`` float in [0, 1] (or uint8, divided by 255), C = len(mean).
            generator: Source of all randomness (see :func:`sample_generator`).

        Returns:
            ``2 + N`` float tensors: ``[C, 224, 224]`` ×2 then ``[C, 96, 96]`` ×N, normalised.

        Raises:
            ValueError: Not an image ``[C, H, W]``, or C ≠ len(mean).
        """
        return [normalize(view(image, generator), self.mean, self.std) for view in self.views]


def msad_view(
    image: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    size_px: int = 224,
    normalization: MSADNormalization = "joint",
    sensor_mean: Optional[Sequence[float]] = None,
    sensor_std: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """The un-augmented MSAD view (docs/xstars.md §3.1): the whole tile resized to ``size_px`` (bilinear, antialiased),
    normalised.

    Resizing every sensor's tile of one footprint to the same size puts grid cell i of each sensor on the same ground.

    Args:
        image: ``[C, H, W]`` float in [0, 1] (or uint8).
        mean: Joint mean (the one the DINO crops use).
        std: Joint std.
        size_px: Output side (224 → 14 × 14 tokens with patch 16).
        normalization: ``"joint"`` (default: same statistics as the DINO views), ``"per_sensor"`` (the sensor's own
            statistics) or ``"double"`` (joint, then per-sensor: the released code, bug B3).
        sensor_mean: Per-sensor mean, required by ``per_sensor`` and ``double``.
        sensor_std: Per-sensor std, same.

    Returns:
        ``[C, size_px, size_px]`` float.

    Raises:
        ValueError: Unknown ``normalization``, or per-sensor statistics missing.
    """
    if normalization not in ("joint", "per_sensor", "double"):
        raise ValueError(f"normalization must be 'joint', 'per_sensor' or 'double', got {normalization!r}")
    if normalization != "joint" and (sensor_mean is None or sensor_std is None):
        raise ValueError(f"normalization {normalization!r} needs sensor_mean and sensor_std")
    image = _as_float_image(image)
    x = resized_crop(image, 0, 0, image.shape[-2], image.shape[-1], size_px, "bilinear")
    if normalization == "per_sensor":
        return normalize(x, sensor_mean, sensor_std)  # type: ignore[arg-type]
    x = normalize(x, mean, std)
    if normalization == "double":
        x = normalize(x, sensor_mean, sensor_std)  # type: ignore[arg-type]
    return x
