"""Image primitives every lesson shares, independent of any photo: resizing, luma, random crops,
and the nine global colour operators (exposure, contrast, saturation, vibrance, white-balance
temperature and tint, a tone curve, shadows, highlights).

Each operator is a differentiable function of a pixel's own colour (so a bilateral grid can
represent it exactly) and takes a signed ``amount``; ``amount = 0`` is the identity.
:data:`GLOBAL_OPS` lists them with the amount of "normal" strength; :mod:`course_lib.world` builds
its nine global edit families from it. The photos, the other families, the instructions and the
dataset live in :mod:`course_lib.world`.

Shapes: images are (3, H, W) or (B, 3, H, W) float in [0, 1]; ``amount`` a float or a (B,) tensor.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

def resize(img: torch.Tensor, size: int | tuple[int, int], short_side: bool = True) -> torch.Tensor:
    """Resize (…, 3, H, W) with antialiasing.

    Args:
        img: (3, H, W) or (B, 3, H, W) float tensor.
        size: an int (the new shorter side if ``short_side`` else the longer side,
            keeping aspect) or an explicit ``(H, W)``.
    """
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h, w = x.shape[-2:]
    if isinstance(size, int):
        scale = size / (min(h, w) if short_side else max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if tuple(size) != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x[0] if squeeze else x


# --------------------------------------------------------------------------- edits
# Every edit maps (B, 3, H, W) in [0, 1] and a signed amount (float or (B,)
# tensor) to (B, 3, H, W) in [0, 1]; amount 0 is the identity.

#: Rec. 709 luma weights.
LUMA = (0.2126, 0.7152, 0.0722)


def luma(img: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B``: (B, 3, H, W) -> (B, 1, H, W)."""
    w = img.new_tensor(LUMA).view(1, 3, 1, 1)
    return (img * w).sum(dim=-3, keepdim=True)


def _amt(amount: float | torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """A float or (B,) amount as a (B, 1, 1, 1) tensor broadcastable over ``img``."""
    a = torch.as_tensor(amount, dtype=img.dtype, device=img.device)
    return a.reshape(-1, 1, 1, 1) if a.dim() > 0 else a


def smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    """Hermite step: 0 below ``e0``, 1 above ``e1``, ``3t^2 - 2t^3`` between."""
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def exposure(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Exposure in stops, in linear light with a 2.2 gamma.

    ``out = ((img^2.2) * 2^ev)^(1/2.2) = img * 2^(ev / 2.2)``, clipped to [0, 1].
    """
    ev = _amt(amount, img)
    return (img * torch.pow(2.0, ev / 2.2)).clamp(0, 1)


def contrast(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Linear contrast about mid-grey: ``out = 0.5 + (img - 0.5) * (1 + amount)``."""
    a = _amt(amount, img)
    return (0.5 + (img - 0.5) * (1 + a)).clamp(0, 1)


def saturation(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Scale chroma about luma: ``out = Y + (img - Y) * (1 + amount)``."""
    a = _amt(amount, img)
    y = luma(img)
    return (y + (img - y) * (1 + a)).clamp(0, 1)


def vibrance(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Saturation weighted toward muted colours.

    With ``s = max(rgb) - min(rgb)`` (0 for greys, 1 for pure colours):
    ``out = Y + (img - Y) * (1 + amount * (1 - s))``.
    """
    a = _amt(amount, img)
    y = luma(img)
    s = img.amax(dim=-3, keepdim=True) - img.amin(dim=-3, keepdim=True)
    return (y + (img - y) * (1 + a * (1 - s))).clamp(0, 1)


def _channel_gains(img: torch.Tensor, amount: float | torch.Tensor, per_unit: tuple[float, float, float]) -> torch.Tensor:
    """``img * (1 + amount * per_unit)`` per channel, clipped: (B, 3, H, W)."""
    c = img.new_tensor(per_unit).view(1, 3, 1, 1)
    return (img * (1 + _amt(amount, img) * c)).clamp(0, 1)


def temperature(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """White-balance temperature: warmer (amount > 0) raises red and lowers blue.

    ``out = img * (1 + a * [0.2, 0, -0.2])`` per channel.
    """
    return _channel_gains(img, amount, (0.2, 0.0, -0.2))


def tint(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """White-balance tint: amount > 0 toward magenta, < 0 toward green.

    ``out = img * (1 + a * [0.1, -0.2, 0.1])`` per channel.
    """
    return _channel_gains(img, amount, (0.1, -0.2, 0.1))


def tone_curve(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """A cubic S-curve per channel (amount > 0: punchier; < 0: faded, flatter).

    ``f(x) = x - 2 a x (1 - x)(1 - 2x)``: fixes 0, 0.5 and 1, monotone for |a| <= 1.
    """
    a = _amt(amount, img)
    return (img - 2 * a * img * (1 - img) * (1 - 2 * img)).clamp(0, 1)


def shadows(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Lift (amount > 0) or deepen (< 0) the shadows only.

    Mask ``m = 1 - smoothstep(0, 0.6, Y)`` selects dark pixels;
    ``out = img + 0.3 * a * m * (1 - img)`` if lifting, ``img * (1 + 0.6 a m)`` if deepening.
    """
    a = _amt(amount, img)
    m = 1 - smoothstep(0.0, 0.6, luma(img))
    lift = img + 0.3 * a.clamp(min=0) * m * (1 - img)
    return (lift * (1 + 0.6 * a.clamp(max=0) * m)).clamp(0, 1)


def highlights(img: torch.Tensor, amount: float | torch.Tensor) -> torch.Tensor:
    """Boost (amount > 0) or tame (< 0) the highlights only.

    Mask ``m = smoothstep(0.4, 1, Y)`` selects bright pixels;
    ``out = img * (1 + 0.5 a m)`` if taming, ``img + 0.3 a m (1 - img)`` if boosting.
    """
    a = _amt(amount, img)
    m = smoothstep(0.4, 1.0, luma(img))
    tame = img * (1 + 0.5 * a.clamp(max=0) * m)
    return (tame + 0.3 * a.clamp(min=0) * m * (1 - tame)).clamp(0, 1)


#: The global colour operators and the amount of "normal" strength of each (a family's ``unit``).
GLOBAL_OPS: dict[str, tuple[Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor], float]] = {
    "exposure": (exposure, 0.7), "contrast": (contrast, 0.3), "saturation": (saturation, 0.45),
    "vibrance": (vibrance, 0.6), "temperature": (temperature, 0.5), "tint": (tint, 0.5),
    "tone_curve": (tone_curve, 0.5), "shadows": (shadows, 0.6), "highlights": (highlights, 0.6),
}


def apply_edits(img: torch.Tensor, edits: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """Apply edits (callables mapping a batch to a batch) in order to a (3, H, W) or (B, 3, H, W) image."""
    x = img[None] if img.dim() == 3 else img
    for e in edits:
        x = e(x)
    return x[0] if img.dim() == 3 else x


# --------------------------------------------------------------------------- crops


def random_crop(img: torch.Tensor, rng: np.random.Generator, size: int, min_side: float = 0.4) -> torch.Tensor:
    """A random crop of (3, H, W) ``img``, resized to (3, size, size): the training augmentation.

    Side ``min_side..1`` of the shorter image side, aspect 3:4..4:3, random position, a
    horizontal flip half the time; every draw comes from ``rng`` (so an item depends only on it).
    """
    h, w = img.shape[-2:]
    side = min(h, w) * rng.uniform(min_side, 1.0)
    aspect = rng.uniform(0.75, 4 / 3)
    ch, cw = min(h, int(side * aspect ** 0.5)), min(w, int(side / aspect ** 0.5))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[:, y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return resize(crop, (size, size))
