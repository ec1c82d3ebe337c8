"""Fused bilateral slice-and-apply in Triton: one forward kernel, one backward kernel.

HDRNet's ``bilateral_slice_apply`` (lesson 01) written as a GPU kernel that never
builds the full-resolution ``(B, 12, H, W)`` coefficient tensor: each program
takes ``BLOCK`` pixels of one image, finds their 8 grid corners, reads the 12
coefficients of each corner and applies them to the pixel's colour at once.

* forward: ``out_i = sum_j A_ij in_j + A_i3`` with ``A_c = sum_8 wx wy wz grid[c]``.
* backward (one pass): ``d in_j = sum_i A_ij d_i``; ``d guide = D sum_8 wx wy
  (dwz/dgz) sum_i d_i (grid_i . [in, 1])``; ``d grid[4i+j] += wx wy wz d_i in_j``
  (a splat: many pixels share a cell, so it uses ``atomic_add`` into fp32).

Loads are cast to fp32 and results cast back, so fp16/bf16 images accumulate in fp32.
Importing this module imports Triton, whose ``@triton.jit`` reads
``TRITON_INTERPRET`` when the kernels are defined: set ``TRITON_INTERPRET=1``
*before* the first import to run the kernels on CPU tensors with the interpreter.
``course_lib.fastslice`` imports this module lazily and wraps it in autograd.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Pixels per program (a power of two; 256 = 4 warps x 32 threads x 2 pixels on a GPU).
BLOCK = 256


@triton.jit
def _axis(g, size, K: tl.constexpr):
    """Corner ``K`` (0 or 1) of cell coordinate ``g`` on an axis of ``size`` cells.

    Returns:
        (index clamped to ``[0, size - 1]``, tent weight from the unclamped index).
    """
    # k0 = floor(g - 1/2),  t = g - 1/2 - k0 in [0, 1)
    f = g - 0.5
    k0 = tl.floor(f)
    t = f - k0
    # tent max(1 - |k + 1/2 - g|, 0):  w(k0) = 1 - t,  w(k0 + 1) = t
    if K == 0:
        w = 1.0 - t
    else:
        w = t
    # border replicate: clamp the index, keep the weight
    idx = tl.minimum(tl.maximum(k0.to(tl.int32) + K, 0), size - 1)
    return idx, w


@triton.jit
def _affine(src, cell, I: tl.constexpr, r, g, b, mask):
    """Row ``I`` of the 3x4 affine at grid address ``src`` applied to ``(r, g, b, 1)``.

    ``src`` points at channel 0 of the corner; channel ``c`` is ``cell`` elements further.
    """
    # grid_I . [r, g, b, 1] = G[4I] r + G[4I+1] g + G[4I+2] b + G[4I+3]
    a0 = tl.load(src + (4 * I + 0) * cell, mask=mask, other=0.0).to(tl.float32)
    a1 = tl.load(src + (4 * I + 1) * cell, mask=mask, other=0.0).to(tl.float32)
    a2 = tl.load(src + (4 * I + 2) * cell, mask=mask, other=0.0).to(tl.float32)
    a3 = tl.load(src + (4 * I + 3) * cell, mask=mask, other=0.0).to(tl.float32)
    return a0 * r + a1 * g + a2 * b + a3


@triton.jit
def _pixels(guide_ptr, image_ptr, H, W, D, HG, WG, BLOCK: tl.constexpr):
    """The BLOCK pixels of this program: flat index, mask, colour and grid coordinates."""
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)  # batch element
    hw = H * W
    p = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) flat pixel index
    mask = p < hw
    y = p // W
    x = p - y * W
    # gx = (x + 1/2) Wg / W,   gy = (y + 1/2) Hg / H,   gz = guide D
    gx = (x.to(tl.float32) + 0.5) * WG / W
    gy = (y.to(tl.float32) + 0.5) * HG / H
    gz = tl.load(guide_ptr + n * hw + p, mask=mask, other=0.0).to(tl.float32) * D
    pix = n * 3 * hw + p  # (BLOCK,) offset of the red value in (B, 3, H, W)
    r = tl.load(image_ptr + pix, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(image_ptr + pix + hw, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(image_ptr + pix + 2 * hw, mask=mask, other=0.0).to(tl.float32)
    return n, p, mask, pix, gx, gy, gz, r, g, b


@triton.jit
def slice_apply_fwd_kernel(grid_ptr, guide_ptr, image_ptr, out_ptr, H, W, D, HG, WG, BLOCK: tl.constexpr):
    """out (B, 3, H, W) from grid (B, 12, D, Hg, Wg), guide (B, H, W), image (B, 3, H, W).

    Launch grid: ``(cdiv(H W, BLOCK), B)``.
    """
    n, p, mask, pix, gx, gy, gz, r, g, b = _pixels(guide_ptr, image_ptr, H, W, D, HG, WG, BLOCK)
    hw = H * W
    cell = D * HG * WG  # elements between two coefficient channels
    base = grid_ptr + n * 12 * cell
    o0 = tl.zeros([BLOCK], dtype=tl.float32)
    o1 = tl.zeros([BLOCK], dtype=tl.float32)
    o2 = tl.zeros([BLOCK], dtype=tl.float32)
    # 8 corners, unrolled at compile time
    for kz in tl.static_range(2):
        iz, wz = _axis(gz, D, kz)
        for ky in tl.static_range(2):
            iy, wy = _axis(gy, HG, ky)
            for kx in tl.static_range(2):
                ix, wx = _axis(gx, WG, kx)
                w = wx * wy * wz
                src = base + (iz * HG + iy) * WG + ix  # channel 0 of this corner
                # out_i += w (grid_i . [r, g, b, 1])
                o0 += w * _affine(src, cell, 0, r, g, b, mask)
                o1 += w * _affine(src, cell, 1, r, g, b, mask)
                o2 += w * _affine(src, cell, 2, r, g, b, mask)
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + pix, o0.to(ty), mask=mask)
    tl.store(out_ptr + pix + hw, o1.to(ty), mask=mask)
    tl.store(out_ptr + pix + 2 * hw, o2.to(ty), mask=mask)


@triton.jit
def _slice_apply_block(base, cell, gx, gy, gz, r, g, b, mask, D, HG, WG):
    """Slice + apply for a block of pixels: the 8-corner loop of :func:`slice_apply_fwd_kernel`.

    Returns:
        (o0, o1, o2), fp32 (BLOCK,) each: ``out_i = sum_8 w (grid_i . [r, g, b, 1])``.
    """
    o0 = tl.zeros(r.shape, dtype=tl.float32)
    o1 = tl.zeros(r.shape, dtype=tl.float32)
    o2 = tl.zeros(r.shape, dtype=tl.float32)
    for kz in tl.static_range(2):
        iz, wz = _axis(gz, D, kz)
        for ky in tl.static_range(2):
            iy, wy = _axis(gy, HG, ky)
            for kx in tl.static_range(2):
                ix, wx = _axis(gx, WG, kx)
                w = wx * wy * wz
                src = base + (iz * HG + iy) * WG + ix
                o0 += w * _affine(src, cell, 0, r, g, b, mask)
                o1 += w * _affine(src, cell, 1, r, g, b, mask)
                o2 += w * _affine(src, cell, 2, r, g, b, mask)
    return o0, o1, o2


@triton.jit
def _curve_guide(params_ptr, r, g, b, K: tl.constexpr):
    """The learned curve guide of a block of pixels (lesson 01's CurveGuide), fp32.

    ``params_ptr`` holds :func:`curve_params`: ccm (9), ccm_bias (3), mix (3), mix_bias (1),
    shifts (3 K), slopes (3 K).
    """
    acc = tl.zeros(r.shape, dtype=tl.float32) + tl.load(params_ptr + 15)
    for c in tl.static_range(3):
        # x'_c = M_c0 r + M_c1 g + M_c2 b + b_c
        x = (tl.load(params_ptr + 3 * c) * r + tl.load(params_ptr + 3 * c + 1) * g
             + tl.load(params_ptr + 3 * c + 2) * b + tl.load(params_ptr + 9 + c))
        # f_c = sum_k slopes_ck relu(x'_c - shifts_ck)
        f = tl.zeros(r.shape, dtype=tl.float32)
        for k in tl.static_range(K):
            f += tl.load(params_ptr + 16 + 3 * K + c * K + k) * tl.maximum(x - tl.load(params_ptr + 16 + c * K + k), 0.0)
        acc += tl.load(params_ptr + 12 + c) * f
    # guide = clip(sum_c mix_c f_c + mix_bias, 0, 1)
    return tl.minimum(tl.maximum(acc, 0.0), 1.0)


@triton.jit
def retouch_kernel(grid_ptr, params_ptr, image_ptr, out_ptr, H, W, D, HG, WG, sb, sc, sh, sw, ob, oc, oh, ow,
                   K: tl.constexpr, IS_U8: tl.constexpr, BLOCK: tl.constexpr):
    """One pass from photo to result: read each pixel once (8-bit or fp32, any strides), the curve
    guide, slice + apply, clamp (and rounding for 8-bit), write once. Launch grid ``(cdiv(H W, BLOCK), B)``."""
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = p < H * W
    y = p // W
    x = p - y * W
    src = image_ptr + n * sb + y * sh + x * sw
    r = tl.load(src, mask=mask, other=0).to(tl.float32)
    g = tl.load(src + sc, mask=mask, other=0).to(tl.float32)
    b = tl.load(src + 2 * sc, mask=mask, other=0).to(tl.float32)
    if IS_U8:
        r, g, b = r / 255.0, g / 255.0, b / 255.0
    # gx = (x + 1/2) Wg / W,  gy = (y + 1/2) Hg / H,  gz = guide D
    gx = (x.to(tl.float32) + 0.5) * WG / W
    gy = (y.to(tl.float32) + 0.5) * HG / H
    gz = _curve_guide(params_ptr, r, g, b, K) * D
    o0, o1, o2 = _slice_apply_block(grid_ptr + n * 12 * (D * HG * WG), D * HG * WG, gx, gy, gz, r, g, b, mask,
                                    D, HG, WG)
    o0 = tl.minimum(tl.maximum(o0, 0.0), 1.0)
    o1 = tl.minimum(tl.maximum(o1, 0.0), 1.0)
    o2 = tl.minimum(tl.maximum(o2, 0.0), 1.0)
    dst = out_ptr + n * ob + y * oh + x * ow
    if IS_U8:
        # v * 255 + 1/2, truncated (course_lib.images.to_uint8)
        o0, o1, o2 = o0 * 255.0 + 0.5, o1 * 255.0 + 0.5, o2 * 255.0 + 0.5
    ty = out_ptr.dtype.element_ty
    tl.store(dst, o0.to(ty), mask=mask)
    tl.store(dst + oc, o1.to(ty), mask=mask)
    tl.store(dst + 2 * oc, o2.to(ty), mask=mask)


@triton.jit
def _backward_row(src, dst, cell, I: tl.constexpr, w, wxy_dwz, d, r, g, b, mask, NEED_GRID: tl.constexpr):
    """One output row ``I`` of one corner in the backward pass.

    Returns:
        (contributions to d r, d g, d b, d gz); splats ``w d_I [r, g, b, 1]`` into ``dst``.
    """
    a0 = tl.load(src + (4 * I + 0) * cell, mask=mask, other=0.0).to(tl.float32)
    a1 = tl.load(src + (4 * I + 1) * cell, mask=mask, other=0.0).to(tl.float32)
    a2 = tl.load(src + (4 * I + 2) * cell, mask=mask, other=0.0).to(tl.float32)
    a3 = tl.load(src + (4 * I + 3) * cell, mask=mask, other=0.0).to(tl.float32)
    # d in_j += w A_Ij d_I
    wd = w * d
    # d gz += wx wy (dwz/dgz) d_I (grid_I . [in, 1])
    dgz = wxy_dwz * d * (a0 * r + a1 * g + a2 * b + a3)
    if NEED_GRID:
        # d grid[4I + j] += w d_I in_j   (in_3 = 1)
        tl.atomic_add(dst + (4 * I + 0) * cell, wd * r, mask=mask, sem="relaxed")
        tl.atomic_add(dst + (4 * I + 1) * cell, wd * g, mask=mask, sem="relaxed")
        tl.atomic_add(dst + (4 * I + 2) * cell, wd * b, mask=mask, sem="relaxed")
        tl.atomic_add(dst + (4 * I + 3) * cell, wd, mask=mask, sem="relaxed")
    return wd * a0, wd * a1, wd * a2, dgz


@triton.jit
def slice_apply_bwd_kernel(grid_ptr, guide_ptr, image_ptr, dout_ptr, dgrid_ptr, dguide_ptr, dimage_ptr,
                           H, W, D, HG, WG, NEED_GRID: tl.constexpr, BLOCK: tl.constexpr):
    """d grid (fp32, accumulated), d guide, d image from d out, in one pass over the pixels."""
    n, p, mask, pix, gx, gy, gz, r, g, b = _pixels(guide_ptr, image_ptr, H, W, D, HG, WG, BLOCK)
    hw = H * W
    cell = D * HG * WG
    base = grid_ptr + n * 12 * cell
    dbase = dgrid_ptr + n * 12 * cell
    d0 = tl.load(dout_ptr + pix, mask=mask, other=0.0).to(tl.float32)
    d1 = tl.load(dout_ptr + pix + hw, mask=mask, other=0.0).to(tl.float32)
    d2 = tl.load(dout_ptr + pix + 2 * hw, mask=mask, other=0.0).to(tl.float32)
    dr = tl.zeros([BLOCK], dtype=tl.float32)
    dg = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    dgz = tl.zeros([BLOCK], dtype=tl.float32)
    for kz in tl.static_range(2):
        iz, wz = _axis(gz, D, kz)
        # dwz/dgz: w(k0) = 1 - t falls, w(k0 + 1) = t rises
        dwz = 2.0 * kz - 1.0
        for ky in tl.static_range(2):
            iy, wy = _axis(gy, HG, ky)
            for kx in tl.static_range(2):
                ix, wx = _axis(gx, WG, kx)
                wxy = wx * wy
                w = wxy * wz
                off = (iz * HG + iy) * WG + ix
                for i in tl.static_range(3):
                    # d_i for output row i (static selection, no runtime branch)
                    d = d0 if i == 0 else (d1 if i == 1 else d2)
                    cr, cg, cb, cz = _backward_row(base + off, dbase + off, cell, i, w, wxy * dwz, d,
                                                   r, g, b, mask, NEED_GRID)
                    dr += cr
                    dg += cg
                    db += cb
                    dgz += cz
    ty = dimage_ptr.dtype.element_ty
    tl.store(dimage_ptr + pix, dr.to(ty), mask=mask)
    tl.store(dimage_ptr + pix + hw, dg.to(ty), mask=mask)
    tl.store(dimage_ptr + pix + 2 * hw, db.to(ty), mask=mask)
    # gz = guide D  =>  d guide = D d gz
    tl.store(dguide_ptr + n * hw + p, (dgz * D).to(dguide_ptr.dtype.element_ty), mask=mask)


def _launch_grid(image: torch.Tensor) -> tuple[int, int]:
    B, _, H, W = image.shape
    return (triton.cdiv(H * W, BLOCK), B)


def forward(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Run the forward kernel on contiguous tensors of one dtype.

    Args:
        grid: (B, 12, D, Hg, Wg). guide: (B, H, W). image: (B, 3, H, W).

    Returns:
        out: (B, 3, H, W) in the image's dtype.
    """
    B, _, H, W = image.shape
    D, Hg, Wg = grid.shape[2:]
    out = torch.empty_like(image)
    if out.numel():
        slice_apply_fwd_kernel[_launch_grid(image)](grid, guide, image, out, H, W, D, Hg, Wg, BLOCK=BLOCK)
    return out


def backward(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor, grad_out: torch.Tensor,
             need_grid: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernel.

    Args:
        grid, guide, image: as in :func:`forward`. grad_out: (B, 3, H, W).
        need_grid: skip the splat (the atomics) when the grid needs no gradient.

    Returns:
        (d grid in the grid's dtype, d guide, d image).
    """
    B, _, H, W = image.shape
    D, Hg, Wg = grid.shape[2:]
    d_grid = torch.zeros(grid.shape, dtype=torch.float32, device=grid.device)  # atomics accumulate in fp32
    d_guide = torch.empty_like(guide)
    d_image = torch.empty_like(image)
    if image.numel():
        slice_apply_bwd_kernel[_launch_grid(image)](grid, guide, image, grad_out.to(image.dtype).contiguous(),
                                                    d_grid, d_guide, d_image, H, W, D, Hg, Wg,
                                                    NEED_GRID=need_grid, BLOCK=BLOCK)
    return d_grid.to(grid.dtype), d_guide, d_image


def curve_params(guide) -> torch.Tensor:
    """A CurveGuide's parameters in :func:`_curve_guide`'s order, one fp32 vector (16 + 6 K,)."""
    parts = [guide.ccm.reshape(-1), guide.ccm_bias, guide.mix, guide.mix_bias.reshape(1),
             guide.shifts.reshape(-1), guide.slopes.reshape(-1)]
    return torch.cat([t.detach().float().reshape(-1) for t in parts])


def retouch(grid: torch.Tensor, image: torch.Tensor, guide, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run :func:`retouch_kernel`: ``image`` (B, 3, H, W) uint8 or fp32, any strides, with a CurveGuide.

    Returns:
        (B, 3, H, W) of the image's dtype and layout (``out`` when given), clipped (8-bit: rounded).
    """
    B, _, H, W = image.shape
    D, Hg, Wg = grid.shape[2:]
    if out is None:
        hwc = image.stride(1) == 1 and image.stride(3) == 3
        out = (torch.empty(B, H, W, 3, dtype=image.dtype, device=image.device).permute(0, 3, 1, 2) if hwc
               else torch.empty(B, 3, H, W, dtype=image.dtype, device=image.device))
    params = curve_params(guide).to(image.device)
    if image.numel():
        retouch_kernel[_launch_grid(image)](grid.float().contiguous(), params, image, out, H, W, D, Hg, Wg,
                                            *image.stride(), *out.stride(), K=guide.shifts.shape[1],
                                            IS_U8=image.dtype == torch.uint8, BLOCK=BLOCK)
    return out
