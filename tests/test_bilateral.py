"""Tests of course_lib.bilateral: slicing semantics, gradients, helpers, BGU, guides, explorer."""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from course_lib import bilateral as bl
from course_lib.checks import float_tol
from course_lib.config import REPO_ROOT
from course_lib.data import luma, resize
from course_lib.world import load_photo
from course_lib.metrics import psnr


def loop_slice_apply(grid: np.ndarray, guide: np.ndarray, image: np.ndarray) -> np.ndarray:
    """An independent, pixel-by-pixel NumPy version of HDRNet's slice + apply (exact tent)."""
    B, C, D, Hg, Wg = grid.shape
    _, _, H, W = image.shape
    out = np.zeros((B, 3, H, W))
    for b in range(B):
        for y in range(H):
            for x in range(W):
                g = ((x + 0.5) * Wg / W, (y + 0.5) * Hg / H, guide[b, y, x] * D)
                coeff = np.zeros(12)
                for kx in (math.floor(g[0] - 0.5), math.floor(g[0] - 0.5) + 1):
                    for ky in (math.floor(g[1] - 0.5), math.floor(g[1] - 0.5) + 1):
                        for kz in (math.floor(g[2] - 0.5), math.floor(g[2] - 0.5) + 1):
                            w = (max(1 - abs(kx + 0.5 - g[0]), 0) * max(1 - abs(ky + 0.5 - g[1]), 0)
                                 * max(1 - abs(kz + 0.5 - g[2]), 0))
                            cx, cy, cz = min(max(kx, 0), Wg - 1), min(max(ky, 0), Hg - 1), min(max(kz, 0), D - 1)
                            coeff += w * grid[b, :, cz, cy, cx]
                for i in range(3):
                    out[b, i, y, x] = sum(coeff[4 * i + j] * image[b, j, y, x] for j in range(3)) + coeff[4 * i + 3]
    return out


SHAPES = [  # B, D, Hg, Wg, H, W: non-square, H/W not multiples of the grid, B > 1, single cells
    (2, 5, 3, 4, 13, 17),
    (1, 8, 4, 4, 9, 7),
    (3, 1, 1, 2, 5, 11),
    (1, 3, 6, 2, 4, 3),  # grid finer than the image vertically
]


@pytest.mark.parametrize("shape", SHAPES)
def test_impls_match_loop(shape):
    B, D, Hg, Wg, H, W = shape
    g = torch.Generator().manual_seed(1)
    grid = torch.randn(B, 12, D, Hg, Wg, generator=g, dtype=torch.float64)
    guide = torch.rand(B, H, W, generator=g, dtype=torch.float64)
    guide[0, 0, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # exactly at the ends
    guide[-1, -1, -1] = 1.0
    image = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    expected = torch.from_numpy(loop_slice_apply(grid.numpy(), guide.numpy(), image.numpy()))
    for impl in ("reference", "grid_sample"):
        out = bl.slice_apply(grid, guide, image, impl=impl)
        assert out.shape == (B, 3, H, W)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=0, msg=impl)
    torch.testing.assert_close(bl.slice_apply(grid, guide, image, impl="auto"), expected, atol=1e-5, rtol=0)


def test_impls_agree_float32_and_hdrnet_eps():
    g = torch.Generator().manual_seed(2)
    grid = torch.randn(2, 12, 8, 5, 7, generator=g)
    guide = torch.rand(2, 37, 51, generator=g)
    image = torch.rand(2, 3, 37, 51, generator=g)
    ref = bl.slice_apply_reference(grid, guide, image)
    # grid_sample weighs and sums the corners in its own order; depth: 8 tent corners x 4 affine terms
    torch.testing.assert_close(bl.slice_apply_grid_sample(grid, guide, image), ref, **float_tol(ref, 32))
    # HDRNet's sqrt(d^2 + 1e-8) smoothing of |d| in z changes weights by at most 1e-4
    guide[:, 0, :8] = (torch.arange(8) + 0.5) / 8  # exactly at cell centres: the worst case
    smooth = bl.slice_coeffs_reference(grid, guide, z_eps=1e-8)
    exact = bl.slice_coeffs_reference(grid, guide)
    assert (smooth - exact).abs().max() <= 1e-4 * grid.abs().max() * 1.01


@pytest.mark.parametrize("impl", ["reference", "grid_sample"])
def test_gradcheck(impl):
    g = torch.Generator().manual_seed(3)
    grid = torch.randn(1, 12, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    # away from the cell centres (kinks of the tent) by more than gradcheck's step
    guide = (0.05 + 0.9 * torch.rand(1, 4, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    image = torch.rand(1, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fn = bl.slice_apply_reference if impl == "reference" else bl.slice_apply_grid_sample
    assert torch.autograd.gradcheck(fn, (grid, guide, image))


def test_gradients_of_impls_agree():
    g = torch.Generator().manual_seed(4)
    args = [torch.randn(2, 12, 4, 3, 5, generator=g, dtype=torch.float64),
            torch.rand(2, 10, 9, generator=g, dtype=torch.float64),
            torch.rand(2, 3, 10, 9, generator=g, dtype=torch.float64)]
    w = torch.randn(2, 3, 10, 9, generator=g, dtype=torch.float64)
    grads = []
    for fn in (bl.slice_apply_reference, bl.slice_apply_grid_sample):
        leaves = [a.clone().requires_grad_(True) for a in args]
        grads.append(torch.autograd.grad((fn(*leaves) * w).sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_splat_is_adjoint_of_slice():
    g = torch.Generator().manual_seed(5)
    grid = torch.randn(2, 4, 5, 3, 4, generator=g, dtype=torch.float64)
    guide = torch.rand(2, 11, 13, generator=g, dtype=torch.float64)
    values = torch.randn(2, 4, 11, 13, generator=g, dtype=torch.float64)
    lhs = (bl.slice_coeffs_reference(grid, guide) * values).sum()
    rhs = (grid * bl.splat(values, guide, 5, 3, 4)).sum()
    assert abs(lhs.item() - rhs.item()) < 1e-10


def test_identity_grid_and_matrix():
    g = torch.Generator().manual_seed(6)
    image = torch.rand(2, 3, 15, 22, generator=g)
    guide = torch.rand(2, 15, 22, generator=g)
    ident = bl.identity_grid(2, 8, 4, 6)
    assert ident.shape == (2, 12, 8, 4, 6)
    for impl in ("reference", "grid_sample", "auto"):
        # depth: 8 tent weights that sum to 1 up to rounding
        torch.testing.assert_close(bl.slice_apply(ident, guide, image, impl=impl), image, **float_tol(image, 8))
    M = torch.randn(2, 3, 4, generator=g)
    grid = bl.grid_from_matrix(M, 3, 2, 5)
    assert grid.shape == (2, 12, 3, 2, 5)
    expected = torch.einsum("bij,bjhw->bihw", M[:, :, :3], image) + M[:, :, 3, None, None]
    torch.testing.assert_close(bl.slice_apply(grid, guide, image, impl="reference"), expected,
                               **float_tol(expected, 32))  # depth: 8 tent corners x 4 affine terms
    assert bl.grid_from_matrix(M[0], 3, 2, 5).shape == (1, 12, 3, 2, 5)


def test_grid_tv():
    assert bl.grid_tv(bl.identity_grid(1, 4, 3, 3)).item() == 0.0
    grid = torch.randn(1, 12, 4, 3, 3, requires_grad=True)
    tv = bl.grid_tv(grid)
    assert tv.item() > 0
    tv.backward()
    assert grid.grad.abs().sum() > 0


def test_bilateral_filter_preserves_edges():
    # a step edge plus noise: the bilateral grid smooths the noise but keeps the step
    g = torch.Generator().manual_seed(7)
    img = torch.full((1, 3, 48, 48), 0.2)
    img[..., 24:] = 0.8
    noisy = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    out = bl.bilateral_filter_grid(noisy, sigma_s=8, sigma_r=0.1)
    blurred = bl.gaussian_blur(noisy, 8.0)
    assert out.shape == noisy.shape
    assert (out - img).abs().mean() < 0.5 * (noisy - img).abs().mean()  # denoised
    assert (out - img).abs().mean() < 0.5 * (blurred - img).abs().mean()  # the edge survives
    assert bl.bilateral_filter_grid(noisy[0]).shape == (3, 48, 48)


M_TRUE = torch.tensor([[1.10, 0.10, -0.05, 0.02], [0.05, 0.90, 0.10, -0.03], [-0.10, 0.05, 1.20, 0.01]])


def _affine(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", M_TRUE[:, :3], x) + M_TRUE[:, 3].view(1, 3, 1, 1)


@pytest.mark.parametrize("photo", ["coffee", "grace_hopper"])
def test_bgu_recovers_global_affine(photo):
    full = load_photo(photo, 192)[None]
    low = resize(full, 64)
    grid = bl.fit_bgu(low, _affine(low), luma(low)[:, 0], D=8, Hg=12, Wg=16)
    assert grid.shape == (1, 12, 8, 12, 16)
    out = bl.slice_apply(grid, luma(full)[:, 0], full)
    assert (out - _affine(full)).abs().max() < 1e-3


def test_bgu_identity_prior_and_real_edit():
    full = load_photo("chelsea", 192)[None]
    low = resize(full, 64)
    grid = bl.fit_bgu(low, _affine(low), luma(low)[:, 0], D=8, Hg=12, Wg=16, prior="identity", lam=1e-8)
    out = bl.slice_apply(grid, luma(full)[:, 0], full)
    assert (out - _affine(full)).abs().max() < 1e-3  # a photo whose colours all appear at low res
    edit = bl.EDITS["shadows & highlights"]
    grid = bl.fit_bgu(low, edit(low), luma(low)[:, 0], D=8, Hg=12, Wg=16)
    out = bl.slice_apply(grid, luma(full)[:, 0], full).clamp(0, 1)
    upsampled = resize(edit(low), tuple(full.shape[-2:]))
    assert float(psnr(out, edit(full))) > float(psnr(upsampled, edit(full))) + 3


@pytest.mark.parametrize("kind", ["luma", "curve", "mlp"])
def test_guides(kind):
    g = torch.Generator().manual_seed(8)
    image = torch.rand(2, 3, 9, 10, generator=g)
    guide = bl.make_guide(kind)
    out = guide(image)
    assert out.shape == (2, 9, 10) and out.min() >= 0 and out.max() <= 1
    if kind == "luma":
        torch.testing.assert_close(out, luma(image)[:, 0])
    if kind == "curve":  # identity curves, 1/3 mix: the channel mean
        torch.testing.assert_close(out, image.mean(1), **float_tol(image, 3))  # depth: 3 channels, 1/3 rounded
    if kind == "mlp":  # zero-initialised correction: starts as luma
        torch.testing.assert_close(out, luma(image)[:, 0])
    # differentiable w.r.t. the image and the parameters, through slice_apply
    x = image.clone().requires_grad_(True)
    grid = torch.randn(2, 12, 4, 2, 3)
    bl.slice_apply(grid, guide(x), x, impl="grid_sample").square().sum().backward()
    assert x.grad.abs().sum() > 0
    for p in guide.parameters():
        assert p.grad is not None


def test_dispatcher():
    g = torch.Generator().manual_seed(9)
    grid, guide, image = torch.randn(1, 12, 2, 2, 2, generator=g), torch.rand(1, 5, 6), torch.rand(1, 3, 5, 6)
    assert {"reference", "grid_sample"} <= set(bl.available_impls())
    with pytest.raises(ValueError):
        bl.slice_apply(grid, guide, image, impl="nope")
    for impl in ("triton", "cpu"):
        if impl in bl.available_impls():
            ref = bl.slice_apply_reference(grid, guide, image)  # depth: 8 tent corners x 4 affine terms
            torch.testing.assert_close(bl.slice_apply(grid, guide, image, impl=impl), ref, **float_tol(ref, 32))
        else:
            with pytest.raises(RuntimeError):
                bl.slice_apply(grid, guide, image, impl=impl)


def test_explore_and_widget():
    res = bl.explore(load_photo("chelsea"), spatial_bins=8, luma_bins=4, strength=1.0, guide_type="luma", size=96, low_size=48,
                     impl="grid_sample")
    h, w = res["before"].shape[-2:]
    assert min(h, w) == 96
    for key in ("after", "target", "upsampled", "difference"):
        assert res[key].shape == (3, h, w)
    assert res["guide"].shape == (h, w)
    assert res["grid"].shape[2:] == (4, 8, round(8 * w / h)) or res["grid"].shape[2:] == (4, round(8 * h / w), 8)
    assert res["psnr_after"] > res["psnr_upsampled"]
    zero = bl.explore(load_photo("chelsea"), spatial_bins=4, luma_bins=2, strength=0.0, guide_type="flat", size=64, low_size=32,
                      impl="grid_sample")
    torch.testing.assert_close(zero["after"], zero["before"], atol=1e-5, rtol=0)

    import ipywidgets as widgets

    calls = []

    def view(spatial_bins, luma_bins, strength, guide_type):
        out = bl.explore(load_photo("chelsea"), spatial_bins, luma_bins, strength, guide_type, size=64, low_size=32, impl="grid_sample")
        calls.append((spatial_bins, luma_bins, strength, guide_type, out["psnr_after"]))

    ui = widgets.interactive(view, spatial_bins=widgets.IntSlider(8, 2, 32), luma_bins=widgets.IntSlider(4, 1, 16),
                             strength=widgets.FloatSlider(1.0, min=0.0, max=2.0),
                             guide_type=widgets.Dropdown(options=["luma", "curve", "mlp", "flat"]))
    assert len(calls) == 1  # interactive runs the callback once with the initial values
    ui.children[0].value = 16
    ui.children[3].value = "curve"
    assert calls[-1][:4] == (16, 4, 1.0, "curve") and len(calls) == 3


def test_dispatcher_uses_registered_fast_kernels(monkeypatch):
    """Lesson 01 never imports lesson 02: fastslice registers its kernels with the dispatcher."""
    called = []
    available = {"cpu": True}
    monkeypatch.setattr(bl, "_FAST", {})
    monkeypatch.setattr(bl, "_fast_loaded", True)  # lesson 02's module is not loaded again
    grid, guide, image = bl.identity_grid(1, 2, 2, 2), torch.rand(1, 4, 4), torch.rand(1, 3, 4, 4)
    assert bl.available_impls() == ["reference", "grid_sample"]
    torch.testing.assert_close(bl.slice_apply(grid, guide, image), image)  # nothing registered: grid_sample
    bl.register_fast_impl("cpu", lambda g, gd, im: called.append("cpu") or bl.slice_apply_reference(g, gd, im),
                          lambda: available["cpu"])
    bl.register_fast_impl("triton", lambda g, gd, im: called.append("triton"), lambda: False)
    torch.testing.assert_close(bl.slice_apply(grid, guide, image), image)
    assert called == ["cpu"] and bl.available_impls() == ["reference", "grid_sample", "cpu"]
    with pytest.raises(RuntimeError):  # listed as unavailable: never called
        bl.slice_apply(grid, guide, image, impl="triton")
    available["cpu"] = False
    torch.testing.assert_close(bl.slice_apply(grid, guide, image), image)  # falls back to grid_sample
    assert called == ["cpu"]


def test_slice_apply_backward_by_hand_matches_autograd_and_gradcheck():
    """Lesson 02's exercise 2.1: the hand-written backward equals autograd of the reference
    (float32, tolerances from the magnitudes) and passes gradcheck in float64."""
    from course_lib import bilateral as B

    g = torch.Generator().manual_seed(0)
    grid = torch.randn(2, 12, 4, 3, 5, generator=g, requires_grad=True)
    guide = torch.rand(2, 7, 9, generator=g)
    guide[0, 0, 0], guide[1, -1, -1] = 0.0, 1.0  # both ends of the guide range
    guide.requires_grad_(True)
    image = torch.rand(2, 3, 7, 9, generator=g, requires_grad=True)
    grad_out = torch.randn(2, 3, 7, 9, generator=g)
    auto = torch.autograd.grad(B.slice_apply_reference(grid, guide, image), (grid, guide, image), grad_out)
    mine = B.slice_apply_backward(grid.detach(), guide.detach(), image.detach(), grad_out)
    eps = torch.finfo(torch.float32).eps
    for a, m in zip(auto, mine):
        # float32 sums of up to 8 * 7 * 9 terms per cell, in another order: ~1e-4 of the magnitude
        tol = 1024 * eps * float(a.abs().max() + 1)
        assert a.shape == m.shape and torch.allclose(a, m, atol=tol, rtol=0), float((a - m).abs().max())

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gr, gd, im):
            ctx.save_for_backward(gr, gd, im)
            return B.slice_apply_reference(gr, gd, im)

        @staticmethod
        def backward(ctx, go):
            return B.slice_apply_backward(*ctx.saved_tensors, go)

    g64 = torch.Generator().manual_seed(1)
    args = (torch.randn(1, 12, 4, 3, 5, generator=g64, dtype=torch.float64, requires_grad=True),
            torch.rand(1, 6, 7, generator=g64, dtype=torch.float64, requires_grad=True),
            torch.rand(1, 3, 6, 7, generator=g64, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(F.apply, args)


def test_default_dispatch_in_a_fresh_process_runs_the_fused_kernel():
    """``slice_apply``'s defaults find lesson 02's kernels without the caller importing lesson 02."""
    code = textwrap.dedent("""
        import sys, torch
        from course_lib import bilateral
        before = "course_lib.fastslice" in sys.modules
        grid = bilateral.identity_grid(1, 8, 16, 16)
        image = torch.rand(1, 3, 108, 192)
        out = bilateral.slice_apply(grid, image.mean(1), image)
        from course_lib import fastslice
        print(before, bilateral.last_impl(), fastslice.cpu_extension_error(), float((out - image).abs().max()))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    before, impl, error, err = res.stdout.split()[-4:]
    assert before == "False"  # nothing imported lesson 02 before the call
    if error != "None":
        pytest.skip(f"C++ extension unavailable here: {error}")
    assert impl == "cpu" and float(err) < 1e-5
