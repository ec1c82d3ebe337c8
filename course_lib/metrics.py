"""How good is a retouch? Fidelity, colour difference, instruction following, content drift, speed.

* :func:`psnr` - peak signal-to-noise ratio against the ground-truth target (dB).
* :func:`ssim` - structural similarity (mean SSIM, scikit-image's uniform-window form).
* :func:`delta_e2000` / :func:`mean_delta_e00` - CIEDE2000 colour difference (Sharma, Wu
  & Dalal 2005) between sRGB images, via CIELAB (D65). ~1 is a just noticeable difference.
* :func:`instruction_accuracy` - did the output do what was asked? For every edit family an
  attribute measure (:data:`ATTRIBUTES`); the instructed attribute must move in the
  instructed direction by about the right amount, the others must stay where the ground
  truth leaves them (tolerances in :data:`TOL_REL`, :data:`TOL_ABS`, :data:`TOL_OTHER`).
  :func:`direction_accuracy` asks only the first half: did it move the right way?
* :func:`content_drift` - change that is not a colour transform. We fit the best
  *piecewise-affine function of the source colour* (the RGB cube cut into 8x8x8 cells,
  one 3x4 affine per cell, least squares with a tiny ridge) from source to output and report
  the RMS residual in 8-bit levels. Any pointwise colour edit (all nine families, their
  compositions, a global affine) has drift close to 0; a blur, a shift or invented content
  leaves a residual because equal source colours then map to different outputs. A
  spatially varying grid also shows up as a small drift.
* :func:`kid` - kernel inception distance (Bińkowski et al. 2018) between two feature sets.
* :func:`latency_ms` - median wall time of a function on a 1080p image.
* :func:`fit_global_affine` - the best single 3x4 colour transform from source to target
  by least squares: an *oracle* baseline (it looks at the target).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .data import GLOBAL_OPS, luma

# ---------------------------------------------------------------------- PSNR


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image.

    Args:
        pred, target: (B, 3, H, W) or (3, H, W) in [0, 1].

    Returns:
        (B,) or () tensor in dB; ``inf`` where the images are identical.
    """
    d = (pred.float() - target.float()).pow(2)
    mse = d.flatten(-3).mean(-1)  # (B,) or ()
    # PSNR = 10 log10(1 / MSE)
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp(min=1e-20)), torch.full_like(mse, math.inf))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM per image with a uniform window (scikit-image's default form), inputs in [0, 1].

    Args:
        x, y: (B, 3, H, W).

    Returns:
        (B,) SSIM in [-1, 1] (1 = identical).
    """
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    pool = lambda v: F.avg_pool2d(v, window, 1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    n = window * window
    vx, vy, cxy = vx * n / (n - 1), vy * n / (n - 1), cxy * n / (n - 1)  # unbiased, as scikit-image
    # SSIM = (2 μx μy + c1)(2 σxy + c2) / ((μx² + μy² + c1)(σx² + σy² + c2))
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


# ---------------------------------------------------------------------- CIELAB and CIEDE2000

#: sRGB (D65) linear RGB -> XYZ.
_RGB2XYZ = ((0.4124564, 0.3575761, 0.1804375),
            (0.2126729, 0.7151522, 0.0721750),
            (0.0193339, 0.1191920, 0.9503041))
#: D65 reference white.
_WHITE = (0.95047, 1.0, 1.08883)


def srgb_to_lab(img: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (D65): (..., 3, H, W) -> (..., 3, H, W) with L in [0, 100]."""
    x = img.double().clamp(0, 1)
    # linearise: c / 12.92 below 0.04045, ((c + 0.055) / 1.055)^2.4 above
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    M = torch.tensor(_RGB2XYZ, dtype=x.dtype, device=x.device)
    xyz = torch.einsum("ij,...jhw->...ihw", M, lin)
    xyz = xyz / torch.tensor(_WHITE, dtype=x.dtype, device=x.device).view(3, 1, 1)
    eps, kappa = 216 / 24389, 24389 / 27
    # f(t) = t^(1/3) above eps, (kappa t + 16) / 116 below
    f = torch.where(xyz > eps, xyz.clamp(min=eps) ** (1 / 3), (kappa * xyz + 16) / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def delta_e2000(lab1: torch.Tensor, lab2: torch.Tensor, kL: float = 1.0, kC: float = 1.0,
                kH: float = 1.0) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), elementwise.

    Args:
        lab1, lab2: (..., 3, ...) CIELAB with the channel axis at ``-3`` (images) or ``-1``
            when the tensors are (N, 3); any broadcastable shapes.

    Returns:
        ΔE00 with the channel axis removed (float64).
    """
    axis = -3 if lab1.dim() >= 3 else -1
    L1, a1, b1 = lab1.double().unbind(axis)
    L2, a2, b2 = lab2.double().unbind(axis)
    C1, C2 = torch.hypot(a1, b1), torch.hypot(a2, b2)
    Cbar = (C1 + C2) / 2
    # G = 0.5 (1 - sqrt(Cbar^7 / (Cbar^7 + 25^7)))
    G = 0.5 * (1 - torch.sqrt(Cbar ** 7 / (Cbar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + G) * a1, (1 + G) * a2
    C1p, C2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360
    h1p = torch.where((a1p == 0) & (b1 == 0), torch.zeros_like(h1p), h1p)
    h2p = torch.where((a2p == 0) & (b2 == 0), torch.zeros_like(h2p), h2p)
    dLp, dCp = L2 - L1, C2p - C1p
    dh = h2p - h1p
    zero = (C1p * C2p) == 0
    dhp = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dhp = torch.where(zero, torch.zeros_like(dhp), dhp)
    # dH' = 2 sqrt(C1' C2') sin(dh' / 2)
    dHp = 2 * torch.sqrt(C1p * C2p) * torch.sin(torch.deg2rad(dhp) / 2)
    Lbp, Cbp = (L1 + L2) / 2, (C1p + C2p) / 2
    hsum = h1p + h2p
    hbp = torch.where(zero, hsum,
                      torch.where((h1p - h2p).abs() <= 180, hsum / 2,
                                  torch.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)))
    rad = torch.deg2rad
    T = (1 - 0.17 * torch.cos(rad(hbp - 30)) + 0.24 * torch.cos(rad(2 * hbp))
         + 0.32 * torch.cos(rad(3 * hbp + 6)) - 0.20 * torch.cos(rad(4 * hbp - 63)))
    dtheta = 30 * torch.exp(-(((hbp - 275) / 25) ** 2))
    Rc = 2 * torch.sqrt(Cbp ** 7 / (Cbp ** 7 + 25.0 ** 7))
    Sl = 1 + 0.015 * (Lbp - 50) ** 2 / torch.sqrt(20 + (Lbp - 50) ** 2)
    Sc = 1 + 0.045 * Cbp
    Sh = 1 + 0.015 * Cbp * T
    Rt = -torch.sin(rad(2 * dtheta)) * Rc
    tl, tc, th = dLp / (kL * Sl), dCp / (kC * Sc), dHp / (kH * Sh)
    # dE00 = sqrt(tl^2 + tc^2 + th^2 + Rt tc th)
    return torch.sqrt((tl ** 2 + tc ** 2 + th ** 2 + Rt * tc * th).clamp(min=0))


def mean_delta_e00(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CIEDE2000 between two sRGB images: (B, 3, H, W) x2 -> (B,) (or () for (3, H, W))."""
    return delta_e2000(srgb_to_lab(pred), srgb_to_lab(target)).flatten(-2).mean(-1).float()


# ---------------------------------------------------------------------- instruction accuracy


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, W) ``v`` over (B, H, W) boolean ``mask`` per image (0 where the mask is empty)."""
    m = mask.to(v.dtype)
    return (v * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)


def _chroma(img: torch.Tensor) -> torch.Tensor:
    """Distance of each pixel's colour from its grey: ``||rgb - Y||``, (B, 3, H, W) -> (B, H, W)."""
    return (img - luma(img)).pow(2).sum(1).sqrt()


def attributes(img: torch.Tensor, source: torch.Tensor) -> dict[str, torch.Tensor]:
    """One scalar per image and edit family, measured on ``img`` (masks come from ``source``).

    ======== ===========================================================================
    exposure    mean luma Y
    contrast    standard deviation of Y
    saturation  mean chroma ``||rgb - Y||``
    vibrance    mean chroma over the source's muted pixels (``max - min`` below its median)
    temperature mean (R - B)
    tint        mean ((R + B) / 2 - G)  (magenta is positive)
    tone_curve  mean ``|Y - 0.5|`` over the source's midtones (Y in [0.15, 0.85])
    shadows     mean Y over the source's dark pixels (Y < 0.35)
    highlights  mean Y over the source's bright pixels (Y > 0.65)
    ======== ===========================================================================

    Args:
        img: (B, 3, H, W) in [0, 1], the image to measure.
        source: (B, 3, H, W), the unedited source (defines the pixel masks).

    Returns:
        dict family name -> (B,) tensor.
    """
    y = luma(img)[:, 0]  # (B, H, W)
    ys = luma(source)[:, 0]
    r, g, b = img.unbind(1)
    sat_src = source.amax(1) - source.amin(1)  # (B, H, W)
    muted = sat_src <= sat_src.flatten(1).median(1).values.view(-1, 1, 1)
    return {
        "exposure": y.flatten(1).mean(1),
        "contrast": y.flatten(1).std(1),
        "saturation": _chroma(img).flatten(1).mean(1),
        "vibrance": _masked_mean(_chroma(img), muted),
        "temperature": (r - b).flatten(1).mean(1),
        "tint": ((r + b) / 2 - g).flatten(1).mean(1),
        "tone_curve": _masked_mean((y - 0.5).abs(), (ys >= 0.15) & (ys <= 0.85)),
        "shadows": _masked_mean(y, ys < 0.35),
        "highlights": _masked_mean(y, ys > 0.65),
    }


ATTRIBUTES = tuple(GLOBAL_OPS)


def named_families(edits) -> list[str]:
    """The family names of one item's edits: a list of edits (each with ``.family``) or their
    string encoding (:func:`course_lib.world.encode_world_edits`, e.g. ``"region_exposure@sky:+1.200"``)."""
    if isinstance(edits, str):
        return [part.split(":")[0].partition("@")[0] for part in filter(None, edits.split(";"))]
    return [e.family for e in edits]
#: An instructed attribute passes when it moves the ground truth's way and
#: ``|d_out - d_gt| <= TOL_REL |d_gt| + TOL_ABS``.
TOL_REL, TOL_ABS = 0.5, 0.005
#: ... and an effect smaller than this in the ground truth is not tested for direction.
MIN_EFFECT = 0.005
#: Every other attribute passes when ``|d_out - d_gt| <= TOL_OTHER`` (the ground truth's
#: own side effects, e.g. exposure raising contrast, are allowed).
TOL_OTHER = 0.02


def instruction_accuracy(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                         edits: Sequence[Sequence | str]) -> torch.Tensor:
    """Did each output follow its instruction? One boolean per image.

    For every family ``f`` the attribute change ``d_out = A_f(output) - A_f(source)`` is
    compared with the ground truth's ``d_gt = A_f(target) - A_f(source)``:

    * instructed families (those in ``edits``) with ``|d_gt| >= MIN_EFFECT``:
      ``sign(d_out) == sign(d_gt)`` and ``|d_out - d_gt| <= TOL_REL |d_gt| + TOL_ABS``;
    * every other attribute: ``|d_out - d_gt| <= TOL_OTHER``.

    Args:
        output, source, target: (B, 3, H, W) in [0, 1].
        edits: per image, a list of :class:`course_lib.world.WorldEdit` or its string encoding.

    Returns:
        (B,) bool tensor.
    """
    a_out, a_src, a_tgt = attributes(output, source), attributes(source, source), attributes(target, source)
    ok = torch.ones(output.shape[0], dtype=torch.bool)
    named = [set(named_families(x)) for x in edits]
    for fam in ATTRIBUTES:
        d_out = (a_out[fam] - a_src[fam]).cpu()
        d_gt = (a_tgt[fam] - a_src[fam]).cpu()
        close_other = (d_out - d_gt).abs() <= TOL_OTHER
        right_dir = torch.sign(d_out) == torch.sign(d_gt)
        close = (d_out - d_gt).abs() <= TOL_REL * d_gt.abs() + TOL_ABS
        instructed = torch.tensor([fam in n for n in named]) & (d_gt.abs() >= MIN_EFFECT)
        ok &= torch.where(instructed, right_dir & close, close_other)
    return ok


def direction_counts(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                     edits: Sequence[Sequence | str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: how many instructed families moved the ground truth's way, and how many were tested.

    A family is tested when its ground-truth effect ``|A_f(target) - A_f(source)|`` is at least
    :data:`MIN_EFFECT`; it is a hit when ``A_f(output) - A_f(source)`` has the same sign.

    Returns:
        ``(hits, tested)``, two (B,) int64 tensors.
    """
    a_out, a_src, a_tgt = (attributes(x, source) for x in (output, source, target))
    hits, tested = torch.zeros(output.shape[0], dtype=torch.long), torch.zeros(output.shape[0], dtype=torch.long)
    for i, enc in enumerate(edits):
        for fam in named_families(enc):
            if fam not in a_tgt:  # a family without a global attribute (colour, spatial, region, local)
                continue
            d_gt = float(a_tgt[fam][i] - a_src[fam][i])
            if abs(d_gt) >= MIN_EFFECT:
                d_out = float(a_out[fam][i] - a_src[fam][i])
                hits[i] += int(d_out * d_gt > 0)
                tested[i] += 1
    return hits, tested


def direction_accuracy(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                       edits: Sequence[Sequence | str]) -> float:
    """Percentage of instructed (image, family) pairs whose attribute moved the ground truth's way.

    Families whose ground-truth effect is below :data:`MIN_EFFECT` are skipped (see
    :func:`direction_counts`). An unchanged image scores 0; a random change about 50.
    """
    hits, tested = direction_counts(output, source, target, edits)
    return 100.0 * int(hits.sum()) / max(int(tested.sum()), 1)


# ---------------------------------------------------------------------- edits of any kind


def edit_accuracy(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                  half_way: float = 0.5, floor: float = 2 / 255) -> torch.Tensor:
    """Did each output make the edit? One boolean per image, for edits of any kind (global,
    colour-selective, spatial, local), with no per-family attribute needed.

    An output counts when it went at least half-way to the target, in RMS over the image:
    ``rms(output - target) <= max(half_way * rms(source - target), floor)``. A target equal to
    its source (a region the photo lacks, a request that names no edit) is met by staying within
    ``floor`` (2 levels of 255) of the source.

    Args:
        output, source, target: (B, 3, H, W) in [0, 1].

    Returns:
        (B,) bool tensor.
    """
    def rms(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean(dim=(1, 2, 3)).sqrt()
    return rms(output - target) <= torch.clamp(half_way * rms(source - target), min=floor)


def change_locality(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Did the output change the same places as the ground truth? Pearson correlation, over
    pixels, of the change magnitudes ``|output - source|`` and ``|target - source|`` (summed
    over channels): 1 when the changed area matches, about 0 when it is unrelated.

    Args:
        output, source, target: (B, 3, H, W) in [0, 1].

    Returns:
        (B,) tensor in [-1, 1]; ``nan`` where either change is constant over the image (e.g. none).
    """
    a = (output - source).abs().sum(1).flatten(1)  # (B, P)
    b = (target - source).abs().sum(1).flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    return torch.where(den > 1e-12, (a * b).sum(1) / den.clamp(min=1e-12), torch.full_like(den, math.nan))


# ---------------------------------------------------------------------- content drift


def content_drift(output: torch.Tensor, source: torch.Tensor, cells: int = 8, ridge: float = 1e-7) -> torch.Tensor:
    """RMS residual (8-bit levels) of the best piecewise-affine colour map from source to output.

    The RGB cube is cut into ``cells``³ boxes; each source pixel falls in one box; per box a
    3x4 affine ``A`` minimises ``sum ||A [src; 1] - out||^2 + ridge n ||A||^2`` over its pixels
    (``n`` = pixel count of the box). The residual is what no function of the source colour
    explains: structure change.

    Args:
        output, source: (B, 3, H, W) (or (3, H, W)) in [0, 1], the same size.
        cells: boxes per RGB axis. ridge: tiny regulariser that keeps sparse boxes solvable.

    Returns:
        (B,) (or ()) tensor, RMS residual x 255.
    """
    squeeze = output.dim() == 3
    out = (output[None] if squeeze else output).double()
    src = (source[None] if squeeze else source).double()
    B = out.shape[0]
    x = torch.cat([src, torch.ones_like(src[:, :1])], 1).flatten(2).transpose(1, 2)  # (B, P, 4)
    y = out.flatten(2).transpose(1, 2)  # (B, P, 3)
    q = (src.clamp(0, 1) * cells).long().clamp(max=cells - 1)  # (B, 3, H, W)
    idx = ((q[:, 0] * cells + q[:, 1]) * cells + q[:, 2]).flatten(1)  # (B, P)
    K = cells ** 3
    result = []
    for b in range(B):
        xx = (x[b, :, :, None] * x[b, :, None, :]).reshape(-1, 16)  # (P, 16)
        xy = (x[b, :, :, None] * y[b, :, None, :]).reshape(-1, 12)  # (P, 12)
        M = torch.zeros(K, 16, dtype=x.dtype).index_add_(0, idx[b], xx).reshape(K, 4, 4)
        N = torch.zeros(K, 12, dtype=x.dtype).index_add_(0, idx[b], xy).reshape(K, 4, 3)
        n = M[:, 3, 3].clamp(min=1)  # pixels per box
        # A^T = (M + ridge n I)^-1 N
        At = torch.linalg.solve(M + ridge * n.view(K, 1, 1) * torch.eye(4, dtype=x.dtype), N)  # (K, 4, 3)
        pred = torch.einsum("pi,pij->pj", x[b], At[idx[b]])  # (P, 3)
        result.append((pred - y[b]).pow(2).mean().sqrt() * 255)
    r = torch.stack(result).float()
    return r[0] if squeeze else r


# ---------------------------------------------------------------------- distributions


def kid(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel ``k(a, b) = (a·b / d + 1)³`` (KID).

    Args:
        x: (m, d), y: (n, d) feature sets (m, n >= 2).
    """
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    # MMD² = E k(x,x') + E k(y,y') − 2 E k(x,y), diagonals excluded
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


# ---------------------------------------------------------------------- baselines and speed


def fit_global_affine(source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """ORACLE: the single 3x4 colour transform that best maps ``source`` to ``target`` (least squares).

    Args:
        source, target: (B, 3, H, W) in [0, 1].

    Returns:
        (B, 3, 4): ``target ~ A[:, :, :3] @ rgb + A[:, :, 3]``.
    """
    x = torch.cat([source, torch.ones_like(source[:, :1])], 1).flatten(2).double()  # (B, 4, P)
    y = target.flatten(2).double()  # (B, 3, P)
    M = x @ x.transpose(1, 2)  # (B, 4, 4)
    N = x @ y.transpose(1, 2)  # (B, 4, 3)
    eye = torch.eye(4, dtype=M.dtype) * ridge * x.shape[-1]
    return torch.linalg.solve(M + eye, N).transpose(1, 2).to(source.dtype)  # (B, 3, 4)


def apply_affine(A: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Apply (B, 3, 4) colour transforms to (B, 3, H, W) images: ``out = A[:, :, :3] rgb + A[:, :, 3]``."""
    return (torch.einsum("bij,bjhw->bihw", A[:, :, :3], image) + A[:, :, 3, None, None]).clamp(0, 1)


def latency_ms(fn: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int] = (1080, 1920),
               repeats: int = 3, warmup: int = 1, device: str | torch.device = "cpu") -> float:
    """Median wall time (ms) of ``fn(image)`` on a random (1, 3, H, W) image (1080p by default)."""
    img = torch.rand(1, 3, *size, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn(img)
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(img)
            sync()
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]
