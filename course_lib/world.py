"""The course's data: a real photo collection, edit families with exact ground truth, open wording.

Photos
    45 free-licensed photographs from Debian's desktop-background packages, vendored in
    ``data/photos/`` (JPEG, long side <= 1024 px, ``manifest.json`` with package, original file,
    author, licence, scene tags; made by ``scripts/vendor_photos.py``), plus 7 sample photos that
    ship inside scikit-image, scikit-learn and matplotlib (:data:`PACKAGE_PHOTOS`). Splits are
    fixed by a hash of the file content (:func:`split_of`): ~60 % train, ~15 % validation, ~25 %
    test; photos of one scene or event (the demo album's labels) share a split.

Edits
    19 families: the 9 global colour operators of :mod:`course_lib.data` (exposure, contrast,
    ..., highlights), and 10 families that must *look at the image*: colour-selective HSL edits
    of one hue range, graduated and radial (spatial) filters, edits of a content region (sky,
    skin tones, foliage) and clarity (local contrast on an edge-aware base/detail split). Each is
    an exact, differentiable function of the photo; masks are in [0, 1] and pixels where the mask
    is 0 are returned unchanged. A region the photo lacks gives the identity
    (:func:`region_mask`'s presence gate).

Instructions
    :mod:`course_lib.grammar`: verbs x objects x modifiers, complaints, polite requests,
    compositions of two or three edits, held-out phrasings and held-out synonyms.

Shapes: images are (B, 3, H, W) float in [0, 1]; masks (B, 1, H, W) in [0, 1]; ``amount`` a float
or a (B,) tensor (0 = identity).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data, grammar
from .bilateral import gaussian_blur
from .config import SHIPPED_DIR
from .data import luma, resize, smoothstep

# --------------------------------------------------------------------------- photos

#: Where the vendored photos and their manifest live (a checkout's ``data/photos``, or the wheel's copy).
PHOTO_DIR: Path = SHIPPED_DIR / "photos"
WORLD_SPLITS = ("train", "val", "test")
#: The split rule: ``u = int(sha256(SALT + group hashes)[:12], 16) / 16^12``; test if u < 0.25,
#: val if u < 0.40, else train. The salt was fixed once: the first of "world-1", "world-2", ...
#: whose test (11-14 photos) and validation (7-10) splits both hold sky, skin, foliage and
#: interior photos while training keeps at least 8 sky, 4 skin and 5 foliage photos.
SPLIT_SALT = "world-25"
SPLIT_CUTS = (0.25, 0.40)
#: Licences accepted for a vendored photo (all allow redistribution).
FREE_LICENCES = ("GPL-2.0-or-later", "LGPL-3.0", "LGPL-2.1", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-4.0", "CC0")
#: Packages whose photos are reserved for evaluation outside the project: never vendored.
RESERVED_PACKAGES = ("mate-backgrounds", "lomiri-wallpapers")

#: Sample photos that ship inside installed packages: (package, where it is read from, licence, scene tags).
PACKAGE_PHOTOS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "astronaut": ("scikit-image", "skimage.data.astronaut", "public domain (NASA)", ("people", "skin", "objects")),
    "coffee": ("scikit-image", "skimage.data.coffee", "CC0 (Rachel Michetti)", ("food", "objects", "interior")),
    "rocket": ("scikit-image", "skimage.data.rocket", "public domain (SpaceX)", ("sky", "objects", "landscape")),
    "china": ("scikit-learn", "sklearn.datasets.load_sample_image('china.jpg')", "CC BY 2.0 (danielbuechele, Flickr)",
              ("architecture", "sky", "foliage")),
    "chelsea": ("scikit-image", "skimage.data.chelsea", "CC0 (Stefan van der Walt)", ("animal",)),
    "flower": ("scikit-learn", "sklearn.datasets.load_sample_image('flower.jpg')", "CC BY 2.0 (vultilion, Flickr)",
               ("flowers", "foliage")),
    "grace_hopper": ("matplotlib", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')", "public domain (U.S. Navy)",
                     ("people", "skin")),
}


@dataclasses.dataclass(frozen=True)
class WorldPhoto:
    """One photo of the collection."""

    name: str
    package: str
    original: str  # the file inside its package
    author: str
    licence: str
    tags: tuple[str, ...]
    group: str
    sha256: str  # of the file's bytes
    split: str
    vendored: bool  # True: data/photos/<name>.jpg; False: read from an installed package


def _package_file(name: str) -> Path:
    """The file a package photo is read from (its bytes decide its split)."""
    if name in ("astronaut", "coffee", "chelsea", "rocket"):
        import skimage

        return Path(skimage.__file__).parent / "data" / (f"{name}.jpg" if name == "rocket" else f"{name}.png")
    if name in ("china", "flower"):
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images" / f"{name}.jpg"
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def read_manifest(folder: Path | None = None) -> list[dict]:
    """The vendored photos' manifest rows (``data/photos/manifest.json``)."""
    return json.loads(((folder or PHOTO_DIR) / "manifest.json").read_text(encoding="utf-8"))


def split_of(group_hashes: Sequence[str], salt: str = SPLIT_SALT) -> str:
    """The split of a group of photos from the SHA-256 of their files (order does not matter)."""
    key = hashlib.sha256((salt + "".join(sorted(group_hashes))).encode()).hexdigest()
    u = int(key[:12], 16) / 16 ** 12
    return "test" if u < SPLIT_CUTS[0] else "val" if u < SPLIT_CUTS[1] else "train"


@functools.lru_cache(maxsize=None)
def photos() -> tuple[WorldPhoto, ...]:
    """The whole collection, vendored photos first, each with its split."""
    rows = []
    for r in read_manifest():
        rows.append(dict(name=r["name"], package=r["package"], original=r["original"], author=r["author"],
                         licence=r["licence"], tags=tuple(r["tags"]), group=r["group"], sha256=r["sha256"],
                         vendored=True))
    for name, (package, loader, licence, tags) in PACKAGE_PHOTOS.items():
        digest = hashlib.sha256(_package_file(name).read_bytes()).hexdigest()
        rows.append(dict(name=name, package=package, original=loader, author="",
                         licence=licence, tags=tags, group=name, sha256=digest, vendored=False))
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r["sha256"])
    return tuple(WorldPhoto(**r, split=split_of(groups[r["group"]])) for r in rows)


def photo_names(split: str | None = None) -> list[str]:
    """Names of the collection's photos, optionally of one split (``"train"``, ``"val"``, ``"test"``)."""
    if split is not None and split not in WORLD_SPLITS:
        raise ValueError(f"split must be one of {WORLD_SPLITS}, not {split!r}")
    return [p.name for p in photos() if split is None or p.split == split]


def photo_info(name: str) -> WorldPhoto:
    for p in photos():
        if p.name == name:
            return p
    raise KeyError(f"unknown photo {name!r}; choose from {photo_names()}")


@functools.lru_cache(maxsize=8)
def _photo_tensor(name: str) -> torch.Tensor:
    p = photo_info(name)
    from PIL import Image

    # a package photo is read from its package's file (PNG or JPEG), a vendored one from data/photos
    with Image.open(PHOTO_DIR / f"{name}.jpg" if p.vendored else _package_file(name)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


def load_photo(name: str, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A collection photo as a (3, H, W) float32 tensor in [0, 1].

    Args:
        name: one of :func:`photo_names`.
        size: ``None`` for the stored size, an int for the shorter side, or ``(H, W)``.
    """
    img = _photo_tensor(name)
    return img.clone() if size is None else resize(img, size)


def scene_counts(split: str | None = None) -> dict[str, int]:
    """How many photos carry each scene tag (of one split, or all)."""
    counts: dict[str, int] = {}
    for p in photos():
        if split is None or p.split == split:
            for t in p.tags:
                counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- masks
# Every mask maps (B, 3, H, W) in [0, 1] to (B, 1, H, W) in [0, 1] and is differentiable.


def opponent(img: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Opponent colour coordinates and chroma: (B, 1, H, W) each.

    ``a = R - (G + B) / 2``, ``b = (sqrt 3 / 2)(G - B)``; the hue angle is ``atan2(b, a)``
    (red 0 deg, yellow 60, green 120, cyan 180, blue 240, magenta 300) and the chroma
    ``c = sqrt(a^2 + b^2 + eps^2)`` (0 for greys, 1 for pure red).
    """
    r, g, b_ = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    a = r - 0.5 * (g + b_)
    b = (math.sqrt(3) / 2) * (g - b_)
    return a, b, torch.sqrt(a * a + b * b + eps * eps)


#: Hue ranges of the colour-selective families: (centre, half-width) in degrees.
HUE_RANGES: dict[str, tuple[float, float]] = {
    "reds": (0.0, 40.0), "oranges": (30.0, 35.0), "yellows": (60.0, 35.0), "greens": (105.0, 50.0),
    "aquas": (175.0, 40.0), "blues": (220.0, 45.0), "purples": (275.0, 40.0), "magentas": (320.0, 40.0),
}


def hue_weight(img: torch.Tensor, centre: float, half_width: float, chroma_lo: float = 0.02,
               chroma_hi: float = 0.08) -> torch.Tensor:
    """Smooth weight of the pixels whose hue lies within ``half_width`` degrees of ``centre``.

    With ``cos d = (a cos h0 + b sin h0) / c`` the cosine of the angle between the pixel's hue and
    the centre (no ``atan2``, so no singular gradient at grey),
    ``w = smoothstep(cos(half_width), 1, cos d) * smoothstep(chroma_lo, chroma_hi, c)``:
    1 at the centre, 0 beyond the half-width and for greys (whose hue is undefined).
    """
    a, b, c = opponent(img)
    h0 = math.radians(centre)
    cos_d = (a * math.cos(h0) + b * math.sin(h0)) / c
    return smoothstep(math.cos(math.radians(half_width)), 1.0, cos_d) * smoothstep(chroma_lo, chroma_hi, c)


def hue_mask(img: torch.Tensor, hue_range: str) -> torch.Tensor:
    """The weight of one named hue range (:data:`HUE_RANGES`): (B, 3, H, W) -> (B, 1, H, W)."""
    return hue_weight(img, *HUE_RANGES[hue_range])


def frame_coords(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [0, 1]: ``y`` (1, 1, H, 1) from the top, ``x`` (1, 1, 1, W)."""
    H, W = img.shape[-2:]
    y = (torch.arange(H, dtype=img.dtype, device=img.device) + 0.5) / H
    x = (torch.arange(W, dtype=img.dtype, device=img.device) + 0.5) / W
    return y.view(1, 1, H, 1), x.view(1, 1, 1, W)


def graduated_mask(img: torch.Tensor, side: str) -> torch.Tensor:
    """A graduated filter's linear-ramp mask (smoothed), full at one side of the frame.

    ``top``: ``1 - smoothstep(0.15, 0.65, y)``; ``bottom``: ``smoothstep(0.35, 0.85, y)``
    (``y`` = 0 at the top edge, 1 at the bottom). Depends only on the frame, not on the colours.
    """
    if side not in ("top", "bottom"):
        raise ValueError(f"side must be 'top' or 'bottom', not {side!r}")
    y, _ = frame_coords(img)
    m = 1 - smoothstep(0.15, 0.65, y) if side == "top" else smoothstep(0.35, 0.85, y)
    return m.expand(img.shape[0], 1, *img.shape[-2:])


def radial_mask(img: torch.Tensor, where: str) -> torch.Tensor:
    """A radial filter's elliptical, feathered mask.

    With ``r = sqrt(((x - 0.5) / 0.5)^2 + ((y - 0.5) / 0.5)^2)`` (1 at the middle of each edge,
    sqrt 2 in the corners; the ellipse follows the frame's aspect): ``centre``:
    ``1 - smoothstep(0.3, 0.95, r)``; ``edges`` (a vignette): ``smoothstep(0.55, 1.35, r)``.
    """
    y, x = frame_coords(img)
    r = torch.sqrt(((x - 0.5) / 0.5) ** 2 + ((y - 0.5) / 0.5) ** 2)
    if where == "centre":
        m = 1 - smoothstep(0.3, 0.95, r)
    elif where == "edges":
        m = smoothstep(0.55, 1.35, r)
    else:
        raise ValueError(f"where must be 'centre' or 'edges', not {where!r}")
    return m.expand(img.shape[0], 1, *img.shape[-2:])


def texture(img: torch.Tensor) -> torch.Tensor:
    """Local texture: RMS luma gradient over a neighbourhood, per 1/256 of the shorter side.

    ``g^2 = (dY/dx)^2 + (dY/dy)^2`` (forward differences, scaled by ``S / 256`` so that the
    measure does not depend on the resolution ``S``); ``t = sqrt(blur(g^2, S / 100) + 1e-8)``.
    (B, 3, H, W) -> (B, 1, H, W).
    """
    y = luma(img)
    S = min(img.shape[-2:])
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1))
    g2 = (gx * gx + gy * gy) * (S / 256.0) ** 2
    return torch.sqrt(gaussian_blur(g2, max(0.5, S / 100.0)) + 1e-8)


def presence_gate(raw: torch.Tensor, lo: float = 0.01, hi: float = 0.03) -> torch.Tensor:
    """``smoothstep(lo, hi, mean(raw))`` per image, (B, 1, 1, 1): 0 when a region covers under
    ``lo`` of the frame, so that an instruction about a region the photo lacks is the identity."""
    return smoothstep(lo, hi, raw.mean(dim=(-3, -2, -1), keepdim=True))


def sky_mask(img: torch.Tensor) -> torch.Tensor:
    """Soft sky mask: position x colour x low texture, feathered, gated by presence.

    * position ``p = 1 - smoothstep(0.25, 0.7, y)`` (the upper part of the frame);
    * colour: blue sky ``hue_weight(220 deg, 55 deg) * smoothstep(0.2, 0.45, Y)`` or bright and
      pale (overcast, haze) ``smoothstep(0.5, 0.8, Y) * (1 - smoothstep(0.12, 0.3, c))``, joined by a soft or
      ``1 - (1 - blue)(1 - bright)``;
    * smoothness ``1 - smoothstep(0.02, 0.08, texture)`` (sky has little texture);
    * ``m = presence_gate(raw) * blur(raw, S / 150)`` with ``raw = p * colour * smoothness``.
    """
    y, _ = frame_coords(img)
    Y = luma(img)
    _, _, c = opponent(img)
    p = 1 - smoothstep(0.25, 0.7, y)
    blue = hue_weight(img, 220.0, 55.0) * smoothstep(0.2, 0.45, Y)
    bright = smoothstep(0.5, 0.8, Y) * (1 - smoothstep(0.12, 0.3, c))
    colour = 1 - (1 - blue) * (1 - bright)
    smooth = 1 - smoothstep(0.02, 0.08, texture(img))
    raw = gaussian_blur(p * colour * smooth, max(0.5, min(img.shape[-2:]) / 150.0)).clamp(0, 1)
    return raw * presence_gate(raw)


def feather(raw: torch.Tensor, frac: float = 1 / 200) -> torch.Tensor:
    """Soften a mask's edges (and JPEG block noise) with a Gaussian of ``frac`` times the shorter side."""
    return gaussian_blur(raw, max(0.5, frac * min(raw.shape[-2:]))).clamp(0, 1)


def skin_mask(img: torch.Tensor) -> torch.Tensor:
    """Soft skin-tone mask: a hue and chroma window, feathered, gated by presence.

    ``hue_weight(18 deg, 24 deg, chroma 0.06..0.12)`` (skin of every complexion sits between red
    and orange, and is never grey) x ``(1 - smoothstep(0.4, 0.55, c))`` (nor saturated paint) x
    luma window ``smoothstep(0.12, 0.25, Y) (1 - smoothstep(0.93, 0.99, Y))``, feathered by
    :func:`feather`. Like any colour key, it also takes wood, sand and oranges of the same hue.
    """
    Y = luma(img)
    _, _, c = opponent(img)
    raw = feather(hue_weight(img, 18.0, 24.0, 0.06, 0.12) * (1 - smoothstep(0.4, 0.55, c))
                  * smoothstep(0.12, 0.25, Y) * (1 - smoothstep(0.93, 0.99, Y)))
    return raw * presence_gate(raw)


def foliage_mask(img: torch.Tensor) -> torch.Tensor:
    """Soft foliage mask: yellow-green to green hues, feathered, gated by presence.

    ``hue_weight(95 deg, 50 deg, chroma 0.04..0.10) * smoothstep(0.03, 0.10, Y)``, feathered by
    :func:`feather`.
    """
    raw = feather(hue_weight(img, 95.0, 50.0, 0.04, 0.10) * smoothstep(0.03, 0.10, luma(img)))
    return raw * presence_gate(raw)


REGION_MASKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sky": sky_mask, "skin": skin_mask, "foliage": foliage_mask}


def region_mask(img: torch.Tensor, region: str) -> torch.Tensor:
    """Any named mask: a content region, a hue range, a graduated side or a radial area."""
    if region in REGION_MASKS:
        return REGION_MASKS[region](img)
    if region in HUE_RANGES:
        return hue_mask(img, region)
    if region in ("top", "bottom"):
        return graduated_mask(img, region)
    if region in ("centre", "edges"):
        return radial_mask(img, region)
    raise KeyError(f"unknown region {region!r}")


def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, shrunk at the borders: (B, C, H, W) -> (B, C, H, W)."""
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """He, Sun & Tang's guided filter: edge-aware smoothing of ``src`` steered by ``guide``.

    Per window a linear model ``q = A I + B``: ``A = cov(I, p) / (var(I) + eps)``,
    ``B = mean(p) - A mean(I)``; the output averages the models of every window over a pixel:
    ``q = mean(A) I + mean(B)``. Edges with ``var(I) >> eps`` are kept, flatter parts smoothed.
    guide, src: (B, 1, H, W). Returns (B, 1, H, W).
    """
    mI, mp = box_filter(guide, r), box_filter(src, r)
    cov = box_filter(guide * src, r) - mI * mp
    var = box_filter(guide * guide, r) - mI * mI
    A = cov / (var + eps)
    B = mp - A * mI
    return box_filter(A, r) * guide + box_filter(B, r)


def detail_layer(img: torch.Tensor, radius_frac: float = 0.02, eps: float = 0.01) -> torch.Tensor:
    """Luma detail over an edge-aware base: ``Y - guided_filter(Y, Y, r, eps)``, ``r = radius_frac * S``.

    (B, 3, H, W) -> (B, 1, H, W).
    """
    Y = luma(img)
    r = max(1, round(radius_frac * min(img.shape[-2:])))
    return Y - guided_filter(Y, Y, r, eps)


# --------------------------------------------------------------------------- edits


def _amt(amount: float | torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(amount, dtype=img.dtype, device=img.device)
    return a.reshape(-1, 1, 1, 1) if a.dim() > 0 else a


def masked_exposure(img: torch.Tensor, amount, m: torch.Tensor) -> torch.Tensor:
    """Exposure in stops where the mask is: ``out = img * 2^(ev m / 2.2)`` (1 where m = 0)."""
    return (img * torch.pow(2.0, _amt(amount, img) * m / 2.2)).clamp(0, 1)


def masked_temperature(img: torch.Tensor, amount, m: torch.Tensor) -> torch.Tensor:
    """White-balance temperature where the mask is: ``out = img * (1 + a m [0.2, 0, -0.2])``."""
    c = img.new_tensor((0.2, 0.0, -0.2)).view(1, 3, 1, 1)
    return (img * (1 + _amt(amount, img) * m * c)).clamp(0, 1)


def masked_saturation(img: torch.Tensor, amount, m: torch.Tensor) -> torch.Tensor:
    """Chroma scaled where the mask is: ``out = img + k (img - Y)`` with ``k = max(a m, -1)``
    (= ``Y + (img - Y)(1 + k)``; ``k = -1`` is grey, never a negative chroma)."""
    k = (_amt(amount, img) * m).clamp(min=-1.0)
    return (img + k * (img - luma(img))).clamp(0, 1)


def masked_hue(img: torch.Tensor, amount, m: torch.Tensor, max_degrees: float = 30.0) -> torch.Tensor:
    """Hue rotated by ``phi = a m max_degrees`` about the grey axis ``k = (1, 1, 1) / sqrt 3``.

    Rodrigues: ``R v = v cos phi + (k x v) sin phi + k (k . v)(1 - cos phi)``, with
    ``k x v = (B - G, R - B, G - R) / sqrt 3`` and ``k (k . v) = mean(v)``: luma-neutral greys
    stay, and positive ``phi`` turns red towards yellow (increasing hue angle).
    """
    phi = _amt(amount, img) * m * math.radians(max_degrees)
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    cross = torch.cat([b - g, r - b, g - r], dim=1) / math.sqrt(3)
    mean = img.mean(dim=1, keepdim=True)
    out = img * torch.cos(phi) + cross * torch.sin(phi) + mean * (1 - torch.cos(phi))
    return out.clamp(0, 1)


def hsl_saturation(img: torch.Tensor, amount, hue_range: str) -> torch.Tensor:
    """HSL panel, saturation of one hue range: :func:`masked_saturation` with :func:`hue_mask`."""
    return masked_saturation(img, amount, hue_mask(img, hue_range))


def hsl_luminance(img: torch.Tensor, amount, hue_range: str) -> torch.Tensor:
    """HSL panel, luminance of one hue range: :func:`masked_exposure` (stops) with :func:`hue_mask`."""
    return masked_exposure(img, amount, hue_mask(img, hue_range))


def hsl_hue(img: torch.Tensor, amount, hue_range: str) -> torch.Tensor:
    """HSL panel, hue of one hue range: :func:`masked_hue` with :func:`hue_mask` (30 deg per unit)."""
    return masked_hue(img, amount, hue_mask(img, hue_range))


def graduated_exposure(img: torch.Tensor, amount, side: str) -> torch.Tensor:
    """A graduated filter of exposure: :func:`masked_exposure` with :func:`graduated_mask`."""
    return masked_exposure(img, amount, graduated_mask(img, side))


def graduated_temperature(img: torch.Tensor, amount, side: str) -> torch.Tensor:
    """A graduated filter of temperature ("make the top warmer")."""
    return masked_temperature(img, amount, graduated_mask(img, side))


def radial_exposure(img: torch.Tensor, amount, where: str) -> torch.Tensor:
    """A radial filter of exposure: brighten the centre (spotlight) or darken the edges (vignette)."""
    return masked_exposure(img, amount, radial_mask(img, where))


def region_exposure(img: torch.Tensor, amount, region: str) -> torch.Tensor:
    """Exposure of a content region (sky, skin, foliage)."""
    return masked_exposure(img, amount, REGION_MASKS[region](img))


def region_temperature(img: torch.Tensor, amount, region: str) -> torch.Tensor:
    """Temperature of a content region ("make the sky warmer")."""
    return masked_temperature(img, amount, REGION_MASKS[region](img))


def region_saturation(img: torch.Tensor, amount, region: str) -> torch.Tensor:
    """Saturation of a content region."""
    return masked_saturation(img, amount, REGION_MASKS[region](img))


def clarity(img: torch.Tensor, amount, target: str = "") -> torch.Tensor:
    """Clarity (local contrast): ``out = img + a * detail``, detail from :func:`detail_layer`.

    ``a > 0`` boosts mid-scale texture without halos at strong edges (the guided filter keeps
    them in the base); ``a = -1`` returns the edge-aware base (smoothing).
    """
    return (img + _amt(amount, img) * detail_layer(img)).clamp(0, 1)


def _global(name: str) -> Callable:
    fn = data.GLOBAL_OPS[name][0]

    def apply(img: torch.Tensor, amount, target: str = "") -> torch.Tensor:
        return fn(img, amount)

    apply.__name__ = name
    apply.__doc__ = f"The global colour operator ``{name}`` (:func:`course_lib.data.{name}`); no target."
    return apply


@dataclasses.dataclass(frozen=True)
class WorldFamily:
    """An edit family of the world: ``fn(img, amount, target)``, the amount for strength 1, targets.

    ``kind``: ``"global"`` (pointwise colour operators, :data:`course_lib.data.GLOBAL_OPS`), ``"colour"`` (one hue
    range), ``"spatial"`` (a region of the frame), ``"region"`` (a content region) or
    ``"local"`` (depends on a neighbourhood: clarity).
    """

    name: str
    kind: str
    fn: Callable[..., torch.Tensor]
    unit: float
    targets: tuple[str, ...] = ("",)


_HUES = tuple(HUE_RANGES)
WORLD_FAMILIES: tuple[WorldFamily, ...] = tuple(
    [WorldFamily(name, "global", _global(name), unit) for name, (_, unit) in data.GLOBAL_OPS.items()] + [
        WorldFamily("hsl_saturation", "colour", hsl_saturation, 1.0, _HUES),
        WorldFamily("hsl_luminance", "colour", hsl_luminance, 1.2, _HUES),
        WorldFamily("hsl_hue", "colour", hsl_hue, 1.0, _HUES),
        WorldFamily("graduated_exposure", "spatial", graduated_exposure, 1.2, ("top", "bottom")),
        WorldFamily("graduated_temperature", "spatial", graduated_temperature, 1.7, ("top", "bottom")),
        WorldFamily("radial_exposure", "spatial", radial_exposure, 1.2, ("centre", "edges")),
        WorldFamily("region_exposure", "region", region_exposure, 1.2, ("sky", "skin", "foliage")),
        WorldFamily("region_temperature", "region", region_temperature, 2.2, ("sky", "skin", "foliage")),
        WorldFamily("region_saturation", "region", region_saturation, 1.5, ("sky", "skin", "foliage")),
        WorldFamily("clarity", "local", clarity, 1.5),
    ])
WORLD_FAMILY = {f.name: f for f in WORLD_FAMILIES}
#: The families that must look at the image (everything but the global colour operators).
NEW_FAMILIES = tuple(f.name for f in WORLD_FAMILIES if f.kind != "global")
#: The nine global families (a fast subset: what a single colour transform can do exactly).
GLOBAL_FAMILIES = tuple(f.name for f in WORLD_FAMILIES if f.kind == "global")


@dataclasses.dataclass(frozen=True)
class WorldEdit:
    """One edit of the world: family, signed amount, target ("" for global families)."""

    family: str
    amount: float
    target: str = ""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return WORLD_FAMILY[self.family].fn(img, self.amount, self.target)


def apply_world_edits(img: torch.Tensor, edits: Sequence[WorldEdit]) -> torch.Tensor:
    """Apply edits in order to a (3, H, W) or (B, 3, H, W) image (:func:`course_lib.data.apply_edits`:
    any edit that maps a batch to a batch)."""
    return data.apply_edits(img, edits)


def encode_world_edits(edits: Sequence[WorldEdit]) -> str:
    """``[WorldEdit('region_temperature', 0.7, 'sky')]`` -> ``"region_temperature@sky:+0.700"``."""
    return ";".join(f"{e.family}{'@' + e.target if e.target else ''}:{e.amount:+.3f}" for e in edits)


def decode_world_edits(text: str) -> list[WorldEdit]:
    """Inverse of :func:`encode_world_edits`."""
    out = []
    for part in filter(None, text.split(";")):
        head, val = part.split(":")
        fam, _, target = head.partition("@")
        out.append(WorldEdit(fam, float(val), target))
    return out


# --------------------------------------------------------------------------- instructions


def target_weights(img: torch.Tensor) -> dict[str, float]:
    """How much of a (3, H, W) image each content-dependent target covers (mean of its mask)."""
    x = img[None] if img.dim() == 3 else img
    with torch.no_grad():
        out = {r: float(fn(x).mean()) for r, fn in REGION_MASKS.items()}
        out.update({h: float(hue_mask(x, h).mean()) for h in HUE_RANGES})
    return out


def sample_world_instruction(rng: np.random.Generator, wording: str = "train", p2: float = 0.25, p3: float = 0.1,
                             families: Sequence[str] | None = None, coverage: dict[str, float] | None = None,
                             present_prob: float = 0.85) -> tuple[str, list[WorldEdit]]:
    """Draw an instruction of one to three edits and the exact edits it names.

    Args:
        rng: a NumPy generator.
        wording: ``"train"``, ``"heldout_phrasing"`` or ``"heldout_synonym"``.
        p2, p3: probabilities of composing two or three edits (of different families).
        families: restrict to these family names.
        coverage: :func:`target_weights` of the image; with probability ``present_prob`` a
            content target is drawn among those the image shows (coverage >= 2 %).

    Returns:
        ``(instruction, edits)``.
    """
    names = list(families or WORLD_FAMILY)
    u = rng.random()
    n = 3 if u < p3 else 2 if u < p2 + p3 else 1
    n = min(n, len(names))
    chosen = rng.choice(len(names), size=n, replace=False)
    parts, edits = [], []
    for idx in chosen:
        fam = WORLD_FAMILY[names[int(idx)]]
        targets = list(fam.targets)
        if coverage is not None and fam.kind in ("colour", "region") and rng.random() < present_prob:
            present = [t for t in targets if coverage.get(t, 0.0) >= 0.02]
            targets = present or targets
        target = targets[int(rng.integers(len(targets)))]
        direction = 1 if rng.random() < 0.5 else -1
        strength = str(rng.choice(list(grammar.STRENGTHS)))
        parts.append(grammar.render_part(fam.name, direction, target, strength, rng, wording))
        edits.append(WorldEdit(fam.name, direction * grammar.STRENGTHS[strength] * fam.unit, target))
    return grammar.compose(parts, rng, wording), edits


#: What the student's "understood as" heads read: one label per family and target
#: (``"exposure"``, ``"region_temperature@sky"``, ...), in a fixed order.
READOUT_LABELS: tuple[str, ...] = tuple(f.name + (f"@{t}" if t else "") for f in WORLD_FAMILIES for t in f.targets)


def readout_targets(edits: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets of the "understood as" heads for an encoded edit list.

    Args:
        edits: :func:`encode_world_edits` string ("" for a request that names no edit).

    Returns:
        ``(present, strength)``, two (K,) float tensors over :data:`READOUT_LABELS`: 1 where the
        instruction names that edit, and its signed strength (amount / unit; 0 where absent).
    """
    present, strength = torch.zeros(len(READOUT_LABELS)), torch.zeros(len(READOUT_LABELS))
    for e in decode_world_edits(edits) if edits else []:
        k = READOUT_LABELS.index(e.family + (f"@{e.target}" if e.target else ""))
        present[k], strength[k] = 1.0, e.amount / WORLD_FAMILY[e.family].unit
    return present, strength


def instruction_bank(n: int, rng: np.random.Generator, none_prob: float = 0.05) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``n`` training-wording instructions for training a reader alone (a ``none_prob`` share names no
    edit), with their readout targets.

    Returns:
        ``(texts, P, S)``: n strings and the (n, K) presence and strength targets of :func:`readout_targets`.
    """
    texts, edits = [], []
    for _ in range(n):
        if rng.random() < none_prob:
            texts.append(grammar.non_edit_text(rng, "train"))
            edits.append("")
        else:
            t, e = sample_world_instruction(rng, "train")
            texts.append(t)
            edits.append(encode_world_edits(e))
    P, S = map(torch.stack, zip(*(readout_targets(e) for e in edits)))
    return texts, P, S


def phrasing_counts() -> dict[str, dict[str, int]]:
    """Per family and direction (``"exposure+"``): distinct patterns per wording and training sentences."""
    return {f"{f.name}{'+' if d > 0 else '-'}": grammar.phrasing_counts(f.name, d, f.targets)
            for f in WORLD_FAMILIES for d in (1, -1)}


# --------------------------------------------------------------------------- dataset


class RetouchWorld(torch.utils.data.Dataset):
    """(source, instruction, target) triples of the photo collection.

    Item ``i`` is a pure function of ``(seed, i)``: a photo of the split, a random crop (35-100 %
    of the shorter side, aspect 3:4 to 4:3, horizontal flip half of the time; never a vertical
    flip, so the sky stays up), resized to ``size``; an instruction of one to three edits in the
    chosen wording; and the exactly edited target. Content targets are mostly drawn among the
    regions the crop shows; the rest name absent regions, whose ground truth is the identity.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` photos.
        wording: ``"train"``, ``"heldout_phrasing"`` or ``"heldout_synonym"``.
        size: output side length (square crops). length: number of items. seed: base seed.
        p2, p3: probabilities of two- and three-edit instructions.
        families: restrict to these families (default all of :data:`WORLD_FAMILIES`).
        p_none: probability of a request that names no edit (:func:`course_lib.grammar.non_edit_text`),
            whose target is the source itself (``edits`` is then ""). 0 keeps every item as before.

    Returns (per item):
        dict with ``source``, ``target`` (3, size, size) float32 in [0, 1], ``instruction``
        (str), ``edits`` (str, :func:`encode_world_edits`), ``photo`` (str).
    """

    def __init__(self, split: str = "train", wording: str = "train", size: int = 128, length: int = 1000,
                 seed: int = 0, p2: float = 0.25, p3: float = 0.1, families: Sequence[str] | None = None,
                 p_none: float = 0.0) -> None:
        self.photos = photo_names(split)
        if wording not in grammar.WORDINGS_KINDS:
            raise ValueError(f"wording must be one of {grammar.WORDINGS_KINDS}, not {wording!r}")
        unknown = set(families or ()) - set(WORLD_FAMILY)
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}")
        self.split, self.wording, self.size = split, wording, int(size)
        self.length, self.seed, self.p2, self.p3 = int(length), int(seed), float(p2), float(p3)
        self.families = list(families) if families else None
        self.p_none = float(p_none)

    def __len__(self) -> int:
        return self.length

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _base(name: str) -> torch.Tensor:
        return load_photo(name, size=512)

    def crop(self, rng: np.random.Generator) -> tuple[str, torch.Tensor]:
        """A random photo of the split and a random crop of it, (3, size, size)."""
        name = self.photos[int(rng.integers(len(self.photos)))]
        return name, data.random_crop(self._base(name), rng, self.size, min_side=0.35)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        name, source = self.crop(rng)
        if self.p_none and rng.random() < self.p_none:
            return {"source": source, "target": source.clone(), "instruction": grammar.non_edit_text(rng, self.wording),
                    "edits": "", "photo": name}
        instruction, edits = sample_world_instruction(rng, self.wording, self.p2, self.p3, self.families,
                                                      coverage=target_weights(source))
        with torch.no_grad():
            target = apply_world_edits(source, edits)
        return {"source": source, "target": target, "instruction": instruction,
                "edits": encode_world_edits(edits), "photo": name}
