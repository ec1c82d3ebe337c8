"""The bilateral grid: slicing, applying, guidance maps (lesson 01).

An *affine bilateral grid* (HDRNet, Gharbi et al. 2017) is a small 5-D tensor
``grid`` of shape ``(B, 12, D, Hg, Wg)``: for every spatial cell ``(y, x)`` and
every intensity bin ``z`` it stores a 3x4 affine colour transform, flattened so
that channel ``c = 4 i + j`` is the coefficient of output colour ``i`` for input
colour ``j`` (``j == 3`` is the bias). A per-pixel *guidance map* ``guide`` in
[0, 1] says which intensity bin a pixel reads from. *Slicing* reads the grid at
``(x, y, guide)`` with trilinear (tent) interpolation; *applying* multiplies the
sliced 3x4 matrix with the pixel's colour. With ``W, H`` the image size:

    gx = (x + 0.5) * Wg / W,   gy = (y + 0.5) * Hg / H,   gz = guide * D
    k0 = floor(g - 0.5),  k1 = k0 + 1              (the two corners per axis)
    w_k = max(1 - |k + 0.5 - g|, 0)                (from the UNclamped k)
    k  <- clamp(k, 0, G - 1)                       (then the index is clamped)
    A_c = sum over 8 corners of wx * wy * wz * grid[c, kz, ky, kx]
    out_i = sum_{j<3} A_{4i+j} * in_j + A_{4i+3}

Two implementations compute exactly this: :func:`slice_apply_reference`
(readable: the 8 corners, gathered one by one) and :func:`slice_apply_grid_sample`
(one ``F.grid_sample`` call). Both are differentiable with respect to the grid,
the guide and the image.

About ``|d|`` in z: HDRNet's op replaces ``|d|`` by ``sqrt(d^2 + 1e-8)`` in the z
tent so that the guide gradient is defined at cell centres. We use the exact
``|d|`` by default (autograd takes the subgradient 0 there, and the two
implementations then agree to float rounding); pass ``z_eps=1e-8`` to
:func:`slice_coeffs_reference` to reproduce HDRNet's smoothing, which changes
weights by at most ``sqrt(1e-8) = 1e-4`` (tested).

Also here: the classic bilateral grid of Chen, Paris & Durand (2007) for
edge-aware smoothing (:func:`bilateral_filter_grid`), Bilateral Guided
Upsampling (Chen et al. 2016, :func:`fit_bgu`), guidance-map modules and the
callback behind the lesson's interactive explorer (:func:`explore`).
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import luma, resize, shadows, highlights, temperature, tone_curve, saturation
from . import metrics

IMPLS = ("auto", "reference", "grid_sample", "triton", "cpu")

# --------------------------------------------------------------------------- grids


def identity_grid(B: int, D: int, Hg: int, Wg: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A grid whose every cell holds the identity transform ``[I | 0]``.

    Returns:
        (B, 12, D, Hg, Wg) tensor; slicing and applying it returns the input image.
    """
    eye = torch.eye(3, 4, dtype=dtype, device=device)  # (3, 4)
    return grid_from_matrix(eye, D, Hg, Wg).expand(B, -1, -1, -1, -1).contiguous()


def grid_from_matrix(M: torch.Tensor, D: int, Hg: int, Wg: int) -> torch.Tensor:
    """A constant grid: the same 3x4 affine transform ``M`` in every cell.

    Args:
        M: (3, 4) or (B, 3, 4); ``M[i, j]`` is the weight of input colour j in output
            colour i, ``M[i, 3]`` the bias.

    Returns:
        (B, 12, D, Hg, Wg) (B = 1 for a (3, 4) matrix); channel ``4 i + j`` holds ``M[i, j]``.
    """
    if M.dim() == 2:
        M = M[None]
    if M.shape[-2:] != (3, 4):
        raise ValueError(f"M must be (3, 4) or (B, 3, 4), got {tuple(M.shape)}")
    B = M.shape[0]
    # (B, 3, 4) -> (B, 12, 1, 1, 1) -> (B, 12, D, Hg, Wg)
    return M.reshape(B, 12, 1, 1, 1).expand(B, 12, D, Hg, Wg).contiguous()


def grid_tv(grid: torch.Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Total-variation (smoothness) regulariser of a grid: mean squared neighbour differences.

    ``TV = wz * mean((G[z+1] - G[z])^2) + wy * mean((G[y+1] - G[y])^2) + wx * mean((G[x+1] - G[x])^2)``

    Args:
        grid: (B, C, D, Hg, Wg).
        weights: (wz, wy, wx) weights of the luma, vertical and horizontal terms.

    Returns:
        A scalar tensor >= 0; 0 exactly for a constant grid.
    """
    total = grid.new_zeros(())
    for w, dim in zip(weights, (2, 3, 4)):
        if grid.shape[dim] > 1:
            total = total + w * grid.diff(dim=dim).pow(2).mean()
    return total


# --------------------------------------------------------------------------- slicing


def tent(d: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Tent (linear interpolation) weight ``max(1 - |d|, 0)``; with ``eps > 0`` HDRNet's
    smoothed ``max(1 - sqrt(d^2 + eps), 0)``."""
    # |d|, or sqrt(d^2 + eps) as HDRNet's z axis
    ad = d.abs() if eps == 0.0 else torch.sqrt(d * d + eps)
    return (1.0 - ad).clamp(min=0.0)


def tent_corners(g: torch.Tensor, size: int, eps: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two interpolation corners of continuous grid coordinates along one axis.

    Args:
        g: any-shape float tensor of grid coordinates (cell ``k`` has its centre at ``k + 0.5``).
        size: number of cells on this axis (indices are clamped to [0, size - 1]).
        eps: smoothing of ``|d|`` (see :func:`tent`).

    Returns:
        ``(i0, i1, w0, w1)``: int64 indices (clamped) and float weights (same shape as ``g``),
        weights computed from the unclamped corners.
    """
    # k0 = floor(g - 1/2),  k1 = k0 + 1
    k0 = torch.floor(g - 0.5)
    k1 = k0 + 1
    # w_k = max(1 - |k + 1/2 - g|, 0)
    w0 = tent(k0 + 0.5 - g, eps)
    w1 = tent(k1 + 0.5 - g, eps)
    # indices clamped to the grid
    i0 = k0.long().clamp(0, size - 1)
    i1 = k1.long().clamp(0, size - 1)
    return i0, i1, w0, w1


def pixel_grid_coords(H: int, W: int, Hg: int, Wg: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid coordinates of pixel centres: ``gy = (y + 0.5) Hg / H`` (H,), ``gx = (x + 0.5) Wg / W`` (W,)."""
    y = torch.arange(H, dtype=dtype, device=device)
    x = torch.arange(W, dtype=dtype, device=device)
    return (y + 0.5) * Hg / H, (x + 0.5) * Wg / W


def _corner_list(guide: torch.Tensor, D: int, Hg: int, Wg: int, z_eps: float = 0.0
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 8 corners of every pixel: a list of (flat cell index, weight), each (B, H, W)."""
    H, W = guide.shape[-2:]
    gy, gx = pixel_grid_coords(H, W, Hg, Wg, guide.dtype, guide.device)  # (H,), (W,)
    # gz = guide * D
    gz = guide * D  # (B, H, W)
    z0, z1, wz0, wz1 = tent_corners(gz, D, z_eps)  # (B, H, W)
    y0, y1, wy0, wy1 = (t[:, None] for t in tent_corners(gy, Hg))  # (H, 1)
    x0, x1, wx0, wx1 = tent_corners(gx, Wg)  # (W,)
    corners = []
    for (iz, wz), (iy, wy), (ix, wx) in itertools.product(((z0, wz0), (z1, wz1)), ((y0, wy0), (y1, wy1)),
                                                          ((x0, wx0), (x1, wx1))):
        # flat index of cell (kz, ky, kx) in a (D, Hg, Wg) block
        idx = (iz * Hg + iy) * Wg + ix  # (B, H, W)
        corners.append((idx, wz * wy * wx))  # weight (B, H, W)
    return corners


def slice_corners(guide: torch.Tensor, D: int, Hg: int, Wg: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The 8 corners of every pixel with what a backward pass needs (lesson 02, exercise 2.1).

    Returns:
        8 tuples ``(idx, w, dw)``, each (B, H, W): the flat cell index in a (D, Hg, Wg) block, the
        weight ``w = wx wy wz``, and its derivative with respect to the guide,
        ``dw/dguide = D wx wy dwz/dgz`` with ``dwz/dgz = sign(kz + 1/2 - gz)`` inside the tent
        (-1 for the lower z-corner, +1 for the upper one; 0 where the weight is 0).
    """
    H, W = guide.shape[-2:]
    gy, gx = pixel_grid_coords(H, W, Hg, Wg, guide.dtype, guide.device)  # (H,), (W,)
    gz = guide * D  # (B, H, W)
    z0, z1, wz0, wz1 = tent_corners(gz, D)  # (B, H, W)
    y0, y1, wy0, wy1 = (t[:, None] for t in tent_corners(gy, Hg))  # (H, 1)
    x0, x1, wx0, wx1 = tent_corners(gx, Wg)  # (W,)
    k0 = torch.floor(gz - 0.5)  # the lower z-corner, unclamped
    out = []
    for kz, iz, wz in ((k0, z0, wz0), (k0 + 1, z1, wz1)):
        # wz = tent(d) = max(1 - |d|, 0) with d = kz + 1/2 - gz: dwz/dgz = sign(d) where |d| < 1
        d = kz + 0.5 - gz
        dwz = torch.where(d.abs() < 1, torch.sign(d), torch.zeros_like(d))
        for (iy, wy), (ix, wx) in itertools.product(((y0, wy0), (y1, wy1)), ((x0, wx0), (x1, wx1))):
            idx = (iz * Hg + iy) * Wg + ix  # (B, H, W)
            # gz = D guide, so dw/dguide = D wx wy dwz/dgz
            out.append((idx, wz * wy * wx, D * dwz * wy * wx))
    return out


def slice_apply_backward(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor, grad_out: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward pass of :func:`slice_apply_reference`, written out (lesson 02, exercise 2.1).

    With ``g_i`` the incoming gradient of output ``i`` and ``in = (r, g, b, 1)``:
    image ``d in_j = sum_i A_ij g_i``; grid ``d grid[corner] += w d A`` with ``d A_ij = g_i in_j``
    (a splat); guide ``d guide = sum_corners (dw/dguide) <d A, grid[corner]>``.

    Args:
        grid: (B, 12, D, Hg, Wg). guide: (B, H, W) in [0, 1]. image: (B, 3, H, W).
        grad_out: (B, 3, H, W), the gradient of the loss with respect to the output.

    Returns:
        ``(grad_grid, grad_guide, grad_image)`` with the shapes of the inputs.
    """
    B, C, D, Hg, Wg = grid.shape
    H, W = guide.shape[-2:]
    A = slice_coeffs_reference(grid, guide).reshape(B, 3, 4, H, W)
    # d in_j = sum_i A_ij g_i
    grad_image = (grad_out[:, :, None] * A[:, :, :3]).sum(dim=1)  # (B, 3, H, W)
    # d A_ij = g_i in_j, in = (r, g, b, 1)
    inp = torch.cat([image, torch.ones_like(image[:, :1])], dim=1)  # (B, 4, H, W)
    dA = (grad_out[:, :, None] * inp[:, None]).reshape(B, C, H * W)  # (B, 12, H*W)
    flat = grid.reshape(B, C, D * Hg * Wg)
    grad_flat = torch.zeros_like(flat)
    grad_guide = guide.new_zeros(B, H * W)
    for idx, w, dw in slice_corners(guide, D, Hg, Wg):
        i = idx.reshape(B, 1, H * W).expand(B, C, H * W)
        # d grid[corner] += w d A (many pixels into one cell: scatter-add)
        grad_flat.scatter_add_(2, i, w.reshape(B, 1, H * W) * dA)
        # d guide += dw/dguide <d A, grid[corner]>
        grad_guide += dw.reshape(B, H * W) * (dA * flat.gather(2, i)).sum(dim=1)
    return grad_flat.reshape(grid.shape), grad_guide.reshape(B, H, W), grad_image


def slice_coeffs_reference(grid: torch.Tensor, guide: torch.Tensor, z_eps: float = 0.0) -> torch.Tensor:
    """Slice a grid at every pixel: the readable version, 8 explicit corners.

    Args:
        grid: (B, C, D, Hg, Wg) (C = 12 for an affine grid, any C works).
        guide: (B, H, W) guidance map, values in [0, 1].
        z_eps: HDRNet's smoothing of ``|d|`` in z (0: exact tent; HDRNet uses 1e-8).

    Returns:
        (B, C, H, W): ``A_c = sum_8 wx * wy * wz * grid[c, kz, ky, kx]``.
    """
    B, C, D, Hg, Wg = grid.shape
    H, W = guide.shape[-2:]
    flat = grid.reshape(B, C, D * Hg * Wg)  # (B, C, D*Hg*Wg)
    out = grid.new_zeros(B, C, H * W)
    for idx, w in _corner_list(guide, D, Hg, Wg, z_eps):
        # grid[c, kz, ky, kx] for every pixel
        vals = flat.gather(2, idx.reshape(B, 1, H * W).expand(B, C, H * W))  # (B, C, H*W)
        # A += w * grid[corner]
        out = out + w.reshape(B, 1, H * W) * vals
    return out.reshape(B, C, H, W)


def slice_coeffs_grid_sample(grid: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Slice a grid with one ``F.grid_sample`` call (same semantics, exact tent in z).

    Normalised coordinates ``(2 (x + .5) / W - 1, 2 (y + .5) / H - 1, 2 guide - 1)`` with
    ``align_corners=False`` unnormalise to ``g - 0.5``, and ``padding_mode='border'`` clamps
    like the index clamp of :func:`tent_corners`.

    Args:
        grid: (B, C, D, Hg, Wg).
        guide: (B, H, W) in [0, 1].

    Returns:
        (B, C, H, W).
    """
    B = grid.shape[0]
    H, W = guide.shape[-2:]
    y = torch.arange(H, dtype=guide.dtype, device=guide.device)
    x = torch.arange(W, dtype=guide.dtype, device=guide.device)
    # (2 (x + .5) / W - 1, 2 (y + .5) / H - 1, 2 guide - 1)
    nx = (2 * (x + 0.5) / W - 1).view(1, 1, W).expand(B, H, W)
    ny = (2 * (y + 0.5) / H - 1).view(1, H, 1).expand(B, H, W)
    nz = 2 * guide - 1
    coords = torch.stack([nx, ny, nz], dim=-1)[:, None]  # (B, 1, H, W, 3), last dim (x, y, z)
    out = F.grid_sample(grid, coords.to(grid.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0]  # (B, C, H, W)


def apply_coeffs(coeffs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel 3x4 affine transforms.

    Args:
        coeffs: (B, 12, H, W), channel ``4 i + j``.
        image: (B, 3, H, W).

    Returns:
        (B, 3, H, W): ``out_i = sum_{j<3} A_ij in_j + A_i3`` (not clipped).
    """
    B, _, H, W = coeffs.shape
    A = coeffs.reshape(B, 3, 4, H, W)  # (B, 3 outputs, 4 inputs, H, W)
    # out_i = sum_j A_ij in_j + A_i3
    return (A[:, :, :3] * image[:, None]).sum(dim=2) + A[:, :, 3]


def slice_apply_reference(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Slice + apply, readable version: :func:`slice_coeffs_reference` then :func:`apply_coeffs`.

    Args:
        grid: (B, 12, D, Hg, Wg). guide: (B, H, W) in [0, 1]. image: (B, 3, H, W).

    Returns:
        (B, 3, H, W).
    """
    return apply_coeffs(slice_coeffs_reference(grid, guide), image)


def slice_apply_grid_sample(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Slice + apply with ``F.grid_sample`` (same arguments and result as the reference)."""
    return apply_coeffs(slice_coeffs_grid_sample(grid, guide), image)


def slice_coeffs(grid: torch.Tensor, guide: torch.Tensor, impl: str = "grid_sample") -> torch.Tensor:
    """Slice a grid: (B, C, D, Hg, Wg), (B, H, W) -> (B, C, H, W); ``impl`` is
    ``"grid_sample"`` (default) or ``"reference"``."""
    if impl == "reference":
        return slice_coeffs_reference(grid, guide)
    if impl == "grid_sample":
        return slice_coeffs_grid_sample(grid, guide)
    raise ValueError(f"slice_coeffs impl must be 'reference' or 'grid_sample', not {impl!r}")


#: Fused kernels, registered by lesson 02's module (``course_lib.fastslice`` calls
#: :func:`register_fast_impl` when it is imported): name -> (function, is_available).
#: Lesson 01 never imports lesson 02 at module level (imports go one way); the first
#: ``slice_apply(impl="auto")`` loads it by name (:func:`_load_fast_impls`), so every caller gets
#: the fastest implementation without importing anything itself. This load by name is the one
#: listed as a plugin in tests/test_layers.py (LOADED_BY_NAME): the loaded module imports this one
#: and registers itself, so the dependency still runs from lesson 02 to lesson 01.
_FAST: dict[str, tuple[Callable, Callable[[], bool]]] = {}
#: The module that registers the fused kernels, loaded on first use.
FAST_MODULE = "course_lib.fastslice"
_fast_loaded = False
_last_impl: str | None = None


def register_fast_impl(name: str, fn: Callable, is_available: Callable[[], bool]) -> None:
    """Offer a fused ``slice_apply_<name>(grid, guide, image)`` to :func:`slice_apply`."""
    _FAST[name] = (fn, is_available)


def _load_fast_impls() -> None:
    """Import :data:`FAST_MODULE` once (it registers its kernels); a failed import leaves the
    grid_sample path (``COURSE_NO_FAST_IMPORT=1`` skips it, to test that path)."""
    global _fast_loaded
    if _fast_loaded:
        return
    _fast_loaded = True
    import importlib
    import os

    if os.environ.get("COURSE_NO_FAST_IMPORT", "").strip() in ("1", "true", "yes"):
        return
    try:
        importlib.import_module(FAST_MODULE)
    except ImportError:
        pass


def _fast_impl(name: str) -> Callable | None:
    """The registered fused implementation ``name`` if it says it is available here, else ``None``."""
    if name not in _FAST:
        _load_fast_impls()
    entry = _FAST.get(name)
    if entry is None:
        return None
    fn, is_available = entry
    return fn if is_available() else None


def available_impls() -> list[str]:
    """Implementations :func:`slice_apply` can use on this machine (without ``"auto"``)."""
    return ["reference", "grid_sample"] + [n for n in ("triton", "cpu") if _fast_impl(n) is not None]


def last_impl() -> str | None:
    """Which implementation the last :func:`slice_apply` call ran (``"cpu"``, ``"triton"``,
    ``"grid_sample"`` or ``"reference"``), ``None`` before the first call."""
    return _last_impl


def slice_apply(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Slice a bilateral grid at every pixel and apply the affine transforms.

    Args:
        grid: (B, 12, D, Hg, Wg) affine grid (channel ``4 i + j``).
        guide: (B, H, W) guidance map in [0, 1].
        image: (B, 3, H, W) input image (any range; the result is not clipped).
        impl: ``"reference"``, ``"grid_sample"``, ``"triton"`` / ``"cpu"`` (fused kernels of
            lesson 02, loaded on first use), or ``"auto"`` (default): the Triton kernel for CUDA
            tensors, the C++ kernel for CPU tensors, when available here; else grid_sample.
            :func:`last_impl` says which one ran.

    Returns:
        (B, 3, H, W).
    """
    global _last_impl
    if impl == "reference":
        _last_impl = impl
        return slice_apply_reference(grid, guide, image)
    if impl == "grid_sample":
        _last_impl = impl
        return slice_apply_grid_sample(grid, guide, image)
    if impl in ("triton", "cpu"):
        fn = _fast_impl(impl)
        if fn is None:
            raise RuntimeError(f"slice_apply impl {impl!r} is not available here (lesson 02's module "
                               f"{FAST_MODULE} did not load it); available: {available_impls()}")
        _last_impl = impl
        return fn(grid, guide, image)
    if impl == "auto":
        name = "triton" if image.is_cuda else "cpu"
        fn = _fast_impl(name) if image.device.type in ("cuda", "cpu") else None
        if fn is None:
            _last_impl = "grid_sample"
            return slice_apply_grid_sample(grid, guide, image)
        _last_impl = name
        return fn(grid, guide, image)
    raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")


# --------------------------------------------------------------------------- splatting and the classic grid


def splat(values: torch.Tensor, guide: torch.Tensor, D: int, Hg: int, Wg: int) -> torch.Tensor:
    """Splat per-pixel values into a grid with the same tent weights: the adjoint of slicing.

    ``grid[c, kz, ky, kx] = sum over pixels of wx * wy * wz * values[c, pixel]``, so that
    ``<slice(G), V> = <G, splat(V)>`` for every grid G and values V.

    Args:
        values: (B, C, H, W). guide: (B, H, W) in [0, 1]. D, Hg, Wg: grid size.

    Returns:
        (B, C, D, Hg, Wg).
    """
    B, C, H, W = values.shape
    flat_vals = values.reshape(B, C, H * W)
    out = values.new_zeros(B, C, D * Hg * Wg)
    for idx, w in _corner_list(guide, D, Hg, Wg):
        # grid[corner] += w * value
        out = out.scatter_add(2, idx.reshape(B, 1, H * W).expand(B, C, H * W), w.reshape(B, 1, H * W) * flat_vals)
    return out.reshape(B, C, D, Hg, Wg)


def blur_grid(grid: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Blur a grid along z, y and x with the binomial kernel [1, 4, 6, 4, 1] / 16 (zero padding).

    Args:
        grid: (B, C, D, Hg, Wg). passes: how many times to blur.

    Returns:
        (B, C, D, Hg, Wg).
    """
    B, C = grid.shape[:2]
    k = grid.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # (5,)
    x = grid.reshape(B * C, 1, *grid.shape[2:])
    for _ in range(passes):
        for shape, pad in (((5, 1, 1), (0, 0, 0, 0, 2, 2)), ((1, 5, 1), (0, 0, 2, 2, 0, 0)), ((1, 1, 5), (2, 2, 0, 0, 0, 0))):
            x = F.conv3d(F.pad(x, pad), k.reshape(1, 1, *shape))
    return x.reshape(grid.shape)


def bilateral_filter_grid(image: torch.Tensor, sigma_s: float = 16.0, sigma_r: float = 0.1,
                          guide: torch.Tensor | None = None) -> torch.Tensor:
    """Edge-aware smoothing with the classic bilateral grid (Chen, Paris & Durand 2007).

    Splat ``(r, g, b, 1)`` into a grid of cells ``sigma_s`` pixels wide and ``sigma_r``
    intensity units deep, blur the grid, slice it, divide by the sliced weight. Pixels on
    either side of a strong edge fall in different intensity bins, so they do not mix.

    Args:
        image: (B, 3, H, W) or (3, H, W) in [0, 1].
        sigma_s: spatial cell size in pixels (larger: smoother).
        sigma_r: range cell size in intensity units (smaller: sharper edges kept).
        guide: (B, H, W) edge-stopping map in [0, 1]; default the image's luma.

    Returns:
        Same shape as ``image``.
    """
    squeeze = image.dim() == 3
    x = image[None] if squeeze else image
    B, _, H, W = x.shape
    g = luma(x)[:, 0].clamp(0, 1) if guide is None else guide
    Hg, Wg, D = max(1, round(H / sigma_s)), max(1, round(W / sigma_s)), max(1, round(1.0 / sigma_r))
    # homogeneous values (r w, g w, b w, w), w = 1
    homog = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (B, 4, H, W)
    grid = blur_grid(splat(homog, g, D, Hg, Wg))  # (B, 4, D, Hg, Wg)
    sliced = slice_coeffs_grid_sample(grid, g)  # (B, 4, H, W)
    # out = sum(w v) / sum(w)
    out = sliced[:, :3] / sliced[:, 3:].clamp(min=1e-8)
    return out[0] if squeeze else out


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding: (B, C, H, W) -> (B, C, H, W)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()  # (2r + 1,)
    C = image.shape[1]
    r_h, r_w = min(r, image.shape[-2] - 1), min(r, image.shape[-1] - 1)
    x = F.pad(image, (0, 0, r_h, r_h), mode="reflect") if r_h > 0 else image
    x = F.conv2d(x, k[r - r_h:r + r_h + 1].reshape(1, 1, -1, 1).expand(C, 1, -1, 1).contiguous(), groups=C)
    x = F.pad(x, (r_w, r_w, 0, 0), mode="reflect") if r_w > 0 else x
    return F.conv2d(x, k[r - r_w:r + r_w + 1].reshape(1, 1, 1, -1).expand(C, 1, 1, -1).contiguous(), groups=C)


# --------------------------------------------------------------------------- bilateral guided upsampling


def fit_bgu(low_in: torch.Tensor, low_out: torch.Tensor, guide_low: torch.Tensor, D: int = 8, Hg: int = 16,
            Wg: int = 16, lam: float = 1e-4, blur: bool = True, prior: str = "global") -> torch.Tensor:
    """Bilateral Guided Upsampling: fit an affine grid that maps ``low_in`` to ``low_out``.

    For each cell, the 3x4 ``A`` minimising
    ``sum_p w_p ||A [in_p; 1] - out_p||^2 + lam n ||A - P||^2`` (``w_p`` the tent
    weights of pixel p for the cell, ``n`` the pixels per spatial cell, ``P`` the prior) is
    ``A = (N + lam n P) (M + lam n I)^-1`` with ``M = sum w x x^T``, ``N = sum w y x^T``,
    ``x = [in; 1]``. The prior matters only where a cell has little or degenerate data (a
    luma bin barely seen at low resolution, a patch of one flat colour): ``"identity"``
    (``P = [I | 0]``, leave such pixels unedited) or ``"global"`` (``P`` = the least-squares
    affine fit of the whole image, which recovers any global affine edit everywhere). Like Chen et al. (2016), ``M`` and ``N`` are blurred over the grid
    before solving, so that neighbouring cells share data (smoothness) and cells without
    pixels borrow from their neighbours. Slice the result at full resolution with
    :func:`slice_apply` and the full-resolution guide.

    Args:
        low_in: (B, 3, h, w) low-resolution input. low_out: (B, 3, h, w) its edited version.
        guide_low: (B, h, w) guide in [0, 1] of ``low_in``.
        D, Hg, Wg: grid size.
        lam: pull toward the prior, relative to the data. 1e-4 keeps coefficients moderate;
            1e-6 to 1e-8 fit the data a little more tightly but let badly conditioned cells
            take extreme values; 1e-2 is visibly too strong.
        blur: blur the statistics before solving.
        prior: ``"global"`` (default) or ``"identity"``.

    Returns:
        (B, 12, D, Hg, Wg) grid, in ``low_in``'s dtype.
    """
    B, _, h, w = low_in.shape
    x = torch.cat([low_in, torch.ones_like(low_in[:, :1])], dim=1).double()  # (B, 4, h, w)
    y = low_out.double()  # (B, 3, h, w)
    # x_a x_b and y_i x_b per pixel
    xx = (x[:, :, None] * x[:, None]).reshape(B, 16, h, w)
    yx = (y[:, :, None] * x[:, None]).reshape(B, 12, h, w)
    stats = splat(torch.cat([xx, yx], dim=1), guide_low.double(), D, Hg, Wg)  # (B, 28, D, Hg, Wg)
    if blur:
        stats = blur_grid(stats)
    n = h * w / (Hg * Wg)  # pixels per spatial cell
    stats = stats.permute(0, 2, 3, 4, 1)  # (B, D, Hg, Wg, 28)
    M = stats[..., :16].reshape(B, D, Hg, Wg, 4, 4)
    N = stats[..., 16:].reshape(B, D, Hg, Wg, 3, 4)
    eye4 = torch.eye(4, dtype=M.dtype, device=M.device)
    if prior == "identity":
        P = torch.eye(3, 4, dtype=M.dtype, device=M.device).expand(B, 3, 4)  # [I | 0]
    elif prior == "global":
        # P = N_all M_all^-1 (the tent weights of a pixel sum to 1, so cell sums = pixel sums)
        M_all, N_all = M.sum(dim=(1, 2, 3)), N.sum(dim=(1, 2, 3))  # (B, 4, 4), (B, 3, 4)
        P = torch.linalg.solve(M_all + 1e-9 * eye4, N_all.transpose(-1, -2)).transpose(-1, -2)  # (B, 3, 4)
    else:
        raise ValueError(f"prior must be 'identity' or 'global', not {prior!r}")
    P = P[:, None, None, None]  # (B, 1, 1, 1, 3, 4)
    # A (M + lam n I) = N + lam n P   <=>   (M + lam n I) A^T = (N + lam n P)^T  (M symmetric)
    At = torch.linalg.solve(M + lam * n * eye4, (N + lam * n * P).transpose(-1, -2))  # (B, D, Hg, Wg, 4, 3)
    A = At.transpose(-1, -2)  # (B, D, Hg, Wg, 3, 4)
    return A.reshape(B, D, Hg, Wg, 12).permute(0, 4, 1, 2, 3).contiguous().to(low_in.dtype)


# --------------------------------------------------------------------------- guidance maps


class LumaGuide(nn.Module):
    """Rec. 709 luma as the guide: (B, 3, H, W) -> (B, H, W) in [0, 1]. No parameters."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return luma(image)[:, 0].clamp(0, 1)


class CurveGuide(nn.Module):
    """HDRNet's learned guide: colour matrix, per-channel curves, 1x1 mix, clip.

    ``x' = M x + b`` (3x3 + bias, init identity); per channel
    ``f_c(x') = sum_k slopes[c, k] relu(x' - shifts[c, k])`` (``n_knots`` knots, shifts
    ``linspace(0, 1)``, slopes init ``[1, 0, ...]`` so ``f_c`` starts as the identity on
    [0, 1]); ``guide = clip(sum_c mix_c f_c + mix_bias, 0, 1)`` with ``mix_c = 1/3``.
    At initialisation the guide is the channel mean.
    """

    def __init__(self, n_knots: int = 16) -> None:
        super().__init__()
        self.ccm = nn.Parameter(torch.eye(3))
        self.ccm_bias = nn.Parameter(torch.zeros(3))
        self.shifts = nn.Parameter(torch.linspace(0, 1, n_knots).repeat(3, 1))  # (3, K)
        slopes = torch.zeros(3, n_knots)
        slopes[:, 0] = 1.0
        self.slopes = nn.Parameter(slopes)  # (3, K)
        self.mix = nn.Parameter(torch.full((3,), 1.0 / 3.0))
        self.mix_bias = nn.Parameter(torch.zeros(()))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # x' = M x + b
        x = torch.einsum("dc,bchw->bdhw", self.ccm, image) + self.ccm_bias.view(1, 3, 1, 1)  # (B, 3, H, W)
        # f_c(x') = sum_k slopes_ck relu(x' - shifts_ck)
        f = (self.slopes.view(1, 3, -1, 1, 1) * F.relu(x[:, :, None] - self.shifts.view(1, 3, -1, 1, 1))).sum(2)
        # guide = clip(sum_c mix_c f_c + bias, 0, 1)
        return ((self.mix.view(1, 3, 1, 1) * f).sum(1) + self.mix_bias).clamp(0, 1)  # (B, H, W)


class MLPGuide(nn.Module):
    """A pointwise MLP guide: ``clip(luma(x) + MLP(x), 0, 1)``, (B, 3, H, W) -> (B, H, W).

    The MLP (1x1 convolutions 3 -> hidden -> 1 with ReLU) has its last layer initialised to
    zero, so the guide starts as the luma guide and learns a correction.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (luma(image) + self.net(image))[:, 0].clamp(0, 1)


GUIDES: dict[str, type[nn.Module]] = {"luma": LumaGuide, "curve": CurveGuide, "mlp": MLPGuide}


def make_guide(kind: str) -> nn.Module:
    """A guide module by name: ``"luma"``, ``"curve"`` or ``"mlp"`` (untrained)."""
    if kind not in GUIDES:
        raise ValueError(f"guide must be one of {sorted(GUIDES)}, not {kind!r}")
    return GUIDES[kind]()


# --------------------------------------------------------------------------- edits and the explorer


def local_contrast(image: torch.Tensor, amount: float = 1.0, sigma_frac: float = 0.03) -> torch.Tensor:
    """A spatially varying edit: boost luma detail, ``Y' = Y + amount (Y - blur(Y))``, colour kept.

    The blur's sigma is ``sigma_frac`` times the shorter side, so the edit looks the same at
    any resolution. (B, 3, H, W) -> (B, 3, H, W) in [0, 1].
    """
    y = luma(image)  # (B, 1, H, W)
    sigma = max(0.5, sigma_frac * min(image.shape[-2:]))
    detail = y - gaussian_blur(y, sigma)
    # out = in * Y' / Y (keeps hue and saturation)
    return (image * (y + amount * detail) / y.clamp(min=1e-3)).clamp(0, 1)


#: Edits offered by the explorer: (B, 3, H, W) -> (B, 3, H, W), pretend-expensive.
EDITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "warm S-curve": lambda x: tone_curve(temperature(x, 0.5), 0.6),
    "shadows & highlights": lambda x: saturation(highlights(shadows(x, 1.0), -0.8), 0.2),
    "local contrast": lambda x: local_contrast(x, 1.5),
}


def explore(photo: torch.Tensor, spatial_bins: int = 16, luma_bins: int = 8,
            strength: float = 1.0, guide_type: str = "luma", edit: str = "shadows & highlights",
            size: int = 256, low_size: int = 128, impl: str = "auto") -> dict:
    """The lesson's explorer: fit a BGU grid to an edit made at low resolution, apply it.

    The edit runs on a ``low_size`` copy; :func:`fit_bgu` fits a ``luma_bins x spatial_bins^2``
    grid; the grid is moved toward the identity by ``strength`` (``A_id + s (A - A_id)``; 1 = as fit)
    and sliced at ``size`` with the chosen guide.

    Args:
        photo: a (3, H, W) tensor in [0, 1] (e.g. :func:`course_lib.world.load_photo`).
        spatial_bins: grid cells along the shorter side (the other side keeps the aspect).
        luma_bins: D. strength: blend toward identity (0 = no edit, >1 exaggerates).
        guide_type: ``"luma"``, ``"curve"``, ``"mlp"`` (untrained) or ``"flat"`` (a constant
            guide: no intensity axis, a purely spatial grid).
        edit: a key of :data:`EDITS`. size, low_size: shorter sides of the output and of the
            low-resolution copy. impl: :func:`slice_apply` implementation.

    Returns:
        dict with (3, H, W) images ``before``, ``after``, ``target`` (the edit run at full
        size), ``upsampled`` (the low-res edit resized), ``difference`` (``|after - before|``,
        x4, clipped); ``guide`` (H, W); floats ``psnr_after``, ``psnr_upsampled`` (dB vs
        ``target``), ``seconds``; ``grid`` (1, 12, D, Hg, Wg).
    """
    t0 = time.perf_counter()
    full = resize(photo, size)
    low = resize(full, low_size)
    if guide_type == "flat":
        guide_fn: Callable[[torch.Tensor], torch.Tensor] = lambda x: torch.full_like(x[:, 0], 0.5)  # noqa: E731
    else:
        guide_fn = make_guide(guide_type)
    h, w = low.shape[-2:]
    Hg, Wg = (spatial_bins, max(1, round(spatial_bins * w / h))) if h <= w else (max(1, round(spatial_bins * h / w)), spatial_bins)
    fn = EDITS[edit]
    with torch.no_grad():
        low_out = fn(low[None])
        grid = fit_bgu(low[None], low_out, guide_fn(low[None]), luma_bins, Hg, Wg)
        ident = identity_grid(1, luma_bins, Hg, Wg, grid.dtype)
        # A_s = A_id + s (A - A_id)
        grid = ident + strength * (grid - ident)
        guide = guide_fn(full[None])
        after = slice_apply(grid, guide, full[None], impl=impl)[0].clamp(0, 1)
        target = fn(full[None])[0]
        upsampled = resize(low_out, tuple(full.shape[-2:]))[0]
    return {
        "before": full, "after": after, "target": target, "upsampled": upsampled,
        "difference": ((after - full).abs() * 4).clamp(0, 1), "guide": guide[0], "grid": grid,
        "psnr_after": float(metrics.psnr(after, target)), "psnr_upsampled": float(metrics.psnr(upsampled, target)),
        "seconds": time.perf_counter() - t0,
    }
