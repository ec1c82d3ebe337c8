"""Fused slice-and-apply kernels (lesson 02) against the reference of lesson 01."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from course_lib import bilateral, fastslice
from course_lib.checks import float_tol
from course_lib.config import REPO_ROOT

# (B, H, W, D, Hg, Wg): non-square, not multiples of anything, B > 1, a 1-cell grid, a grid finer than the image
SHAPES = [(2, 37, 53, 8, 5, 7), (1, 17, 20, 1, 1, 1), (3, 9, 31, 4, 16, 12), (1, 70, 3, 6, 2, 9)]


def make_inputs(B, H, W, D, Hg, Wg, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randn(B, 12, D, Hg, Wg, generator=gen, dtype=dtype)
    guide = torch.rand(B, H, W, generator=gen, dtype=dtype)
    guide[0, 0, : W // 2] = 0.0  # both ends of the guide range
    guide[-1, -1, W // 2:] = 1.0
    image = torch.rand(B, 3, H, W, generator=gen, dtype=dtype)
    return grid, guide, image


def value_and_grads(fn, args, dout):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, dout.to(out.dtype))


@pytest.fixture(scope="module")
def cpu_ext():
    fastslice._reset_cpu_extension()
    ext = fastslice.load_cpu_extension()
    if ext is None:
        pytest.skip(f"C++ extension unavailable here: {fastslice.cpu_extension_error()}")
    return ext


@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference_fp32(cpu_ext, shape):
    args64 = make_inputs(*shape)
    dout = torch.randn(shape[0], 3, shape[1], shape[2], dtype=torch.float64)
    ref, ref_grads = value_and_grads(bilateral.slice_apply_reference, args64, dout)
    out, grads = value_and_grads(fastslice.slice_apply_cpu, [a.float() for a in args64], dout)
    assert out.dtype == torch.float32
    # float32 rounding against exact fp64, in the kernel's (CPU- and thread-dependent) order; depth:
    # out, d image and d guide sum 8 tent corners x 4 affine terms (d guide = D d gz: the factor D is
    # in its values already); one coefficient of d grid sums every pixel under its tent (x 2 z-corners)
    torch.testing.assert_close(out.double(), ref, **float_tol(ref, 32))
    B, H, W, D, Hg, Wg = shape
    cell_pixels = 2 * math.ceil(H / Hg + 1) * math.ceil(W / Wg + 1)
    for name, g, rg, depth in zip(("grid", "guide", "image"), grads, ref_grads, (cell_pixels, 32, 32)):
        torch.testing.assert_close(g.double(), rg, **float_tol(rg, depth), msg=lambda m: f"d {name}: {m}")


def test_cpu_gradcheck_fp64(cpu_ext):
    args = [a.requires_grad_(True) for a in make_inputs(2, 6, 7, 3, 2, 3)]
    assert torch.autograd.gradcheck(fastslice.slice_apply_cpu, args, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 1.5e-1)])
def test_cpu_half_precision(cpu_ext, dtype, tol):
    args = make_inputs(2, 13, 19, 4, 3, 5)
    low = [a.to(dtype) for a in args]
    ref = bilateral.slice_apply_reference(*[a.double() for a in low])  # same rounded inputs
    out = fastslice.slice_apply_cpu(*low)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    grads = value_and_grads(fastslice.slice_apply_cpu, low, torch.ones(2, 3, 13, 19))[1]
    assert [g.dtype for g in grads] == [dtype] * 3 and all(g.isfinite().all() for g in grads)


def test_cpu_guide_4d_mixed_dtypes_and_dispatch(cpu_ext):
    grid, guide, image = make_inputs(2, 11, 14, 8, 4, 4, dtype=torch.float32)
    ref = bilateral.slice_apply_reference(grid, guide, image)
    tol = float_tol(ref, 32)  # two float32 slicings, each summing 8 tent corners x 4 affine terms in its order
    torch.testing.assert_close(fastslice.slice_apply_cpu(grid, guide[:, None], image), ref, **tol)
    out64 = fastslice.slice_apply_cpu(grid, guide, image.double())  # promoted to fp64
    assert out64.dtype == torch.float64
    torch.testing.assert_close(bilateral.slice_apply(grid, guide, image, impl="cpu"), ref, **tol)
    torch.testing.assert_close(bilateral.slice_apply(grid, guide, image, impl="auto"), ref, **tol)
    assert "cpu" in fastslice.available_impls()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset peak memory")
def test_cpu_4k_never_materialises_coefficients(cpu_ext):
    B, H, W = 1, 2160, 3840
    grid = torch.randn(B, 12, 8, 16, 16, requires_grad=True)
    guide = torch.rand(B, H, W, requires_grad=True)
    image = torch.rand(B, 3, H, W, requires_grad=True)
    dout = torch.ones(B, 3, H, W)
    plane = H * W * 4  # bytes of one fp32 plane

    def peak_growth(fn) -> int:
        status = lambda key: int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                                      if line.startswith(key))) * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
        before = status("VmRSS:")
        fn()
        return status("VmHWM:") - before

    growth = peak_growth(lambda: torch.autograd.grad(fastslice.slice_apply_cpu(grid, guide, image),
                                                     (grid, guide, image), dout))
    # out (3 planes) + d image (3) + d guide (1) must exist; (B, 12, H, W) coefficients would add 12 more
    assert growth < (7 + 6) * plane, f"peak grew by {growth / plane:.1f} planes"


def test_fallback_without_compiler(monkeypatch, capsys):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")  # a machine without a compiler
    fastslice._reset_cpu_extension()
    try:
        grid, guide, image = make_inputs(2, 8, 9, 4, 2, 3, dtype=torch.float32)
        out = fastslice.slice_apply_cpu(grid, guide, image)
        out2 = fastslice.slice_apply_cpu(grid, guide, image)
        err = capsys.readouterr().err
        assert err.count("fastslice: C++ kernel unavailable") == 1 and "grid_sample" in err
        assert len(err.strip().splitlines()) == 1
        ref = bilateral.slice_apply_reference(grid, guide, image)  # grid_sample's order; 8 corners x 4 terms
        torch.testing.assert_close(out, ref, **float_tol(ref, 32))
        assert torch.equal(out, out2)
        assert "cpu" not in fastslice.available_impls()
        assert "no C++ compiler" in fastslice.cpu_extension_error()
    finally:
        fastslice._reset_cpu_extension()  # later tests load the cached build again


def test_broken_kernel_is_an_error_not_a_silent_fallback(monkeypatch):
    """With a working toolchain, a kernel that does not compile raises (one line), in every entry point."""
    if fastslice.missing_toolchain() is not None:
        pytest.skip(fastslice.missing_toolchain())

    def broken(native, verbose):
        raise RuntimeError("Error building extension 'course_bilateral_slice': error: expected ';'")

    monkeypatch.setattr(fastslice, "_build", broken)
    fastslice._reset_cpu_extension()
    try:
        grid, guide, image = make_inputs(1, 8, 9, 4, 2, 3, dtype=torch.float32)
        with pytest.raises(fastslice.KernelBuildError, match="does not build") as e:
            fastslice.slice_apply_cpu(grid, guide, image)
        assert "\n" not in str(e.value)
        fastslice._reset_cpu_extension()
        with pytest.raises(fastslice.KernelBuildError):
            bilateral.slice_apply(grid, guide, image, impl="auto")
    finally:
        fastslice._reset_cpu_extension()


TRITON_SCRIPT = textwrap.dedent("""
    import json, torch
    from course_lib import bilateral, fastslice
    assert fastslice.triton_available()
    report = []
    # 9 x 13 = 117 and 17 x 20 = 340 pixels: partial blocks (BLOCK = 256)
    for (B, H, W, D, Hg, Wg) in [(2, 9, 13, 4, 3, 5), (1, 17, 20, 1, 1, 1)]:
        gen = torch.Generator().manual_seed(B * H)
        grid = torch.randn(B, 12, D, Hg, Wg, generator=gen, dtype=torch.float64)
        guide = torch.rand(B, H, W, generator=gen, dtype=torch.float64)
        guide[0, 0, :4] = 0.0; guide[0, -1, :4] = 1.0
        image = torch.rand(B, 3, H, W, generator=gen, dtype=torch.float64)
        dout = torch.randn(B, 3, H, W, generator=gen, dtype=torch.float64)
        for dtype in (torch.float32, torch.float16):
            low = [t.to(dtype) for t in (grid, guide, image)]
            ref_in = [t.double().requires_grad_(True) for t in low]
            ref = bilateral.slice_apply_reference(*ref_in)
            ref_g = torch.autograd.grad(ref, ref_in, dout)
            ins = [t.clone().requires_grad_(True) for t in low]
            out = fastslice.slice_apply_triton(*ins)
            g = torch.autograd.grad(out, ins, dout.to(dtype))
            err = lambda a, b: ((a.double() - b).abs() / (1 + b.abs())).max().item()
            report.append({"dtype": str(dtype), "out_dtype": str(out.dtype), "fwd": err(out, ref),
                           "grads": [err(a, b) for a, b in zip(g, ref_g)]})
    print(json.dumps(report))
""")


def test_triton_interpreter_matches_reference():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in report:
        tol = 1e-5 if case["dtype"] == "torch.float32" else 1e-2  # relative: |a - b| / (1 + |b|)
        assert case["out_dtype"] == case["dtype"]
        assert case["fwd"] < tol and max(case["grads"]) < tol, case


def test_triton_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    grid, guide, image = make_inputs(1, 4, 4, 2, 2, 2, dtype=torch.float32)
    if not torch.cuda.is_available():
        assert "triton" not in fastslice.available_impls()
    with pytest.raises(RuntimeError, match="CUDA"):
        fastslice.slice_apply_triton(grid, guide, image)


def test_frame_cost_1080p():
    cost = fastslice.frame_cost(1080, 1920)
    assert cost["bytes"] == pytest.approx(1920 * 1080 * 7 * 4 + 12 * 8 * 16 * 16 * 4)
    assert 0.4e9 < cost["flops"] < 0.5e9  # ~0.45 GFLOP per 1080p frame


def test_bench_command_smoke(tmp_path, capsys):
    from course_lib.__main__ import main

    assert main(["bench", "slice", "--sizes", "40x24,33", "--repeats", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| naive | fwd |" in text and "x off the floor" in text
    result = json.loads((tmp_path / "bench_slice.json").read_text())
    assert {r["impl"] for r in result["rows"]} >= {"naive"} and result["bandwidth_GBps"] > 0
    assert (tmp_path / "bench_slice.png").stat().st_size > 0 and (tmp_path / "bench_slice.md").exists()
    assert result["command"].startswith("python -m course_lib bench slice --sizes 40x24,33")
    # an existing output is never replaced without --overwrite (checked before the run)
    before = (tmp_path / "bench_slice.json").read_text()
    assert main(["bench", "slice", "--sizes", "40x24", "--repeats", "1", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "bench_slice.json").read_text() == before
    assert main(["bench", "slice", "--sizes", "40x24", "--repeats", "1", "--out", str(tmp_path), "--overwrite",
                 "--json", str(tmp_path / "r" / "slice.json")]) == 0
    assert json.loads((tmp_path / "r" / "slice.json").read_text())["rows"]
    with pytest.raises(SystemExit):
        main(["bench", "--help"])


# --------------------------------------------------------------------------- one pass from photo to result


def _curve_guide(seed=0):
    """A CurveGuide moved away from its initialisation (unsorted shifts, a mixing colour matrix)."""
    gen = torch.Generator().manual_seed(seed)
    guide = bilateral.CurveGuide()
    with torch.no_grad():
        guide.ccm.add_(0.1 * torch.randn(3, 3, generator=gen))
        guide.ccm_bias.add_(0.05 * torch.randn(3, generator=gen))
        guide.shifts.add_(0.03 * torch.randn(3, 16, generator=gen))
        guide.slopes.add_(0.3 * torch.randn(3, 16, generator=gen))
        guide.mix_bias.fill_(0.02)
    return guide


def _u8_reference(grid, guide, photo):
    """The float path, clamped and rounded as images.to_uint8 does: (B, 3, H, W) uint8."""
    x = photo.float() / 255.0
    with torch.no_grad():
        out = bilateral.slice_apply_reference(grid, guide(x), x)
    return (out.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


@pytest.mark.parametrize("shape", SHAPES)
def test_retouch_pass_8bit_matches_float_reference(cpu_ext, shape):
    B, H, W, D, Hg, Wg = shape
    gen = torch.Generator().manual_seed(1)
    grid = bilateral.identity_grid(B, D, Hg, Wg) + 0.3 * torch.randn(B, 12, D, Hg, Wg, generator=gen)
    guide = _curve_guide()
    hwc = torch.randint(0, 256, (B, H, W, 3), generator=gen, dtype=torch.uint8)  # as decoded
    photo = hwc.permute(0, 3, 1, 2)  # (B, 3, H, W) view, no copy
    ref = _u8_reference(grid, guide, photo)
    for image in (photo, photo.contiguous()):
        out = fastslice.retouch_pass(grid, image, guide)
        assert out.dtype == torch.uint8 and out.shape == (B, 3, H, W) and out.stride() == image.stride()
        assert (out.int() - ref.int()).abs().max() <= 1  # within 1/255
        assert (out != ref).float().mean() < 0.01  # and almost always equal
    buf = torch.empty(B, H, W, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    assert fastslice.retouch_pass(grid, photo, guide, out=buf) is buf
    assert (buf.int() - ref.int()).abs().max() <= 1
    # a guide map instead of the curve guide
    gmap = torch.rand(B, H, W, generator=gen)
    ref2 = (bilateral.slice_apply_reference(grid, gmap, photo.float() / 255).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    assert (fastslice.retouch_pass(grid, photo, gmap).int() - ref2.int()).abs().max() <= 1


@pytest.mark.parametrize("knots", [16, 5])
def test_retouch_pass_float_matches_reference(cpu_ext, knots):
    B, H, W, D, Hg, Wg = SHAPES[0]
    grid, _, image = make_inputs(B, H, W, D, Hg, Wg, dtype=torch.float32)
    guide = _curve_guide() if knots == 16 else bilateral.CurveGuide(n_knots=knots)
    with torch.no_grad():
        ref = bilateral.slice_apply_reference(grid, guide(image), image)
    out = fastslice.retouch_pass(grid, image, guide, clamp=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fastslice.retouch_pass(grid, image, guide), ref.clamp(0, 1), atol=1e-4, rtol=1e-4)


def test_forward_into_a_given_buffer(cpu_ext):
    grid, guide, image = make_inputs(*SHAPES[0], dtype=torch.float32)
    out = torch.full_like(image, float("nan"))
    with torch.no_grad():
        res = fastslice.slice_apply_cpu(grid, guide, image, out=out)
    assert res is out
    torch.testing.assert_close(out, fastslice.slice_apply_cpu(grid, guide, image).detach())
    with pytest.raises(RuntimeError):  # no gradients through a given buffer
        fastslice.slice_apply_cpu(grid.requires_grad_(True), guide, image, out=out)


@pytest.mark.parametrize("size", [(256, 256), (16, 16), (11, 23), (50, 80)])
def test_resize_fast_matches_data_resize(cpu_ext, size):
    from course_lib.data import resize

    gen = torch.Generator().manual_seed(2)
    hwc = torch.randint(0, 256, (2, 45, 70, 3), generator=gen, dtype=torch.uint8)
    photo = hwc.permute(0, 3, 1, 2)
    ref = resize(photo.float() / 255, size)
    torch.testing.assert_close(fastslice.resize_fast(photo, size), ref, atol=1e-5, rtol=0)
    image = torch.rand(1, 3, 300, 500, generator=gen)
    torch.testing.assert_close(fastslice.resize_fast(image, size), resize(image, size), atol=1e-5, rtol=0)


TRITON_RETOUCH_SCRIPT = textwrap.dedent("""
    import json, torch
    from course_lib import bilateral, fastslice
    torch.manual_seed(0)
    guide = bilateral.CurveGuide()
    with torch.no_grad():
        guide.ccm.add_(0.1 * torch.randn(3, 3)); guide.slopes.add_(0.3 * torch.randn(3, 16))
    report = []
    for (B, H, W, D, Hg, Wg) in [(2, 9, 13, 4, 3, 5), (1, 17, 20, 8, 2, 2)]:
        grid = bilateral.identity_grid(B, D, Hg, Wg) + 0.3 * torch.randn(B, 12, D, Hg, Wg)
        photo = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
        x = photo.float() / 255
        with torch.no_grad():
            ref = bilateral.slice_apply_reference(grid, guide(x), x).clamp(0, 1)
        out8 = fastslice.retouch_pass(grid, photo, guide, impl="triton")
        outf = fastslice.retouch_pass(grid, x, guide, impl="triton")
        ref8 = (ref * 255 + 0.5).to(torch.uint8)
        report.append({"u8": int((out8.int() - ref8.int()).abs().max()), "layout": out8.stride() == photo.stride(),
                       "f32": float((outf - ref).abs().max())})
    print(json.dumps(report))
""")


def test_triton_retouch_pass_matches_reference_in_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", TRITON_RETOUCH_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert case["u8"] <= 1 and case["layout"] and case["f32"] < 1e-5, case  # within 1/255


def test_portable_loops_under_aten_default_capability_match_the_16_pixel_path(cpu_ext):
    """``ATEN_CPU_CAPABILITY=default`` selects the portable loops at run time (one build, both paths): a fresh
    process computes the 8-bit pass, the float pass and the float forward there; they match this process's."""
    code = textwrap.dedent("""
        import sys, torch
        from course_lib import fastslice
        ext = fastslice.load_cpu_extension()
        grid, photo, guide, image = torch.load(sys.argv[1], weights_only=False)
        with torch.no_grad():
            res = [fastslice.retouch_pass(grid, photo, guide), fastslice.retouch_pass(grid, image, guide, clamp=False),
                   fastslice.slice_apply_cpu(grid, guide(image), image)]
        torch.save([ext.simd_active(), *res], sys.argv[2])
    """)
    B, H, W, D, Hg, Wg = 2, 37, 70, 8, 5, 7
    gen = torch.Generator().manual_seed(3)
    grid = bilateral.identity_grid(B, D, Hg, Wg) + 0.3 * torch.randn(B, 12, D, Hg, Wg, generator=gen)
    photo = torch.randint(0, 256, (B, H, W, 3), generator=gen, dtype=torch.uint8).permute(0, 3, 1, 2)
    image = torch.rand(B, 3, H, W, generator=gen)
    guide = _curve_guide()
    with torch.no_grad():
        here = [fastslice.retouch_pass(grid, photo, guide), fastslice.retouch_pass(grid, image, guide, clamp=False),
                fastslice.slice_apply_cpu(grid, guide(image), image)]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        torch.save([grid, photo, guide, image], f"{tmp}/in.pt")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ATEN_CPU_CAPABILITY": "default"}
        res = subprocess.run([sys.executable, "-c", code, f"{tmp}/in.pt", f"{tmp}/out.pt"], capture_output=True,
                             text=True, env=env, cwd=REPO_ROOT, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        active, *there = torch.load(f"{tmp}/out.pt", weights_only=False)
    assert active is False  # the portable loops ran there
    assert (there[0].int() - here[0].int()).abs().max() <= 1 and (there[0] != here[0]).float().mean() < 0.01
    torch.testing.assert_close(there[1], here[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(there[2], here[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("D", [1, 2, 3, 8, 16])
def test_vector_path_matches_reference_to_1e5(cpu_ext, D):
    """The 8-pixel (AVX2) or 16-pixel path where this CPU has one: float32 values within 1e-5 of the
    fp64 reference, with a width that is no multiple of 8 (the row's tail), x patches changing inside
    a group of 8 pixels, guides outside [0, 1] (border cells) and the learned curve guide."""
    B, H, W, Hg, Wg = 2, 13, 45, 5, 11
    gen = torch.Generator().manual_seed(7)
    grid = 0.5 * torch.randn(B, 12, D, Hg, Wg, generator=gen, dtype=torch.float64)
    image = torch.rand(B, 3, H, W, generator=gen, dtype=torch.float64)
    guide = 1.4 * torch.rand(B, H, W, generator=gen, dtype=torch.float64) - 0.2
    ref = bilateral.slice_apply_reference(grid, guide, image)
    with torch.no_grad():
        out = fastslice.slice_apply_cpu(grid.float(), guide.float(), image.float(), out=torch.empty(B, 3, H, W))
    assert (out.double() - ref).abs().max() < 1e-5
    curve = _curve_guide()
    with torch.no_grad():
        ref_c = bilateral.slice_apply_reference(grid, copy.deepcopy(curve).double()(image), image)
        res = fastslice.retouch_pass(grid.float(), image.float(), curve, clamp=False)
    assert (res.double() - ref_c).abs().max() < 1e-5
    assert cpu_ext.simd_path() in ("avx512", "avx2", "portable")
    assert cpu_ext.simd_active() == (cpu_ext.simd_path() != "portable")


def _awkward_curve_guide(n_knots):
    """Knots unsorted, repeated (three equal shifts per channel) and partly out of reach of x' = M x + b for x in
    [0, 1]^3 (below -1 and above 2); slopes of both signs; identity colour matrix, so pixels can sit on knots."""
    gen = torch.Generator().manual_seed(11)
    guide = bilateral.CurveGuide(n_knots=n_knots)
    with torch.no_grad():
        shifts = torch.rand(3, n_knots, generator=gen)[:, torch.randperm(n_knots, generator=gen)]
        shifts[:, 1] = shifts[:, 4] = shifts[:, n_knots - 1] = shifts[:, 2]
        shifts[:, 3] = -1.5
        shifts[:, n_knots - 2] = 2.5
        guide.shifts.copy_(shifts)
        guide.slopes.copy_(torch.randn(3, n_knots, generator=gen))
        guide.mix_bias.fill_(0.3)
    return guide


@pytest.mark.parametrize("n_knots", [16, 7, 20])
def test_retouch_pass_curve_guide_with_unsorted_repeated_and_unreachable_knots(cpu_ext, n_knots):
    """Whatever path runs (the vector paths sort the knots and evaluate each curve as one line per segment):
    float32 results within 1e-5 of the fp64 reference, also for pixels exactly on a knot; 20 knots take the
    portable curve on every path."""
    B, H, W, D, Hg, Wg = 1, 11, 45, 8, 3, 5
    gen = torch.Generator().manual_seed(12)
    guide = _awkward_curve_guide(n_knots)
    grid = bilateral.identity_grid(B, D, Hg, Wg) + 0.3 * torch.randn(B, 12, D, Hg, Wg, generator=gen)
    image = torch.rand(B, 3, H, W, generator=gen)
    image[0, :, 0, :n_knots] = guide.shifts.detach()  # colours on the knots
    image[0, :, 1, :n_knots] = guide.shifts.detach().clamp(0, 1)
    with torch.no_grad():
        ref = bilateral.slice_apply_reference(grid.double(), copy.deepcopy(guide).double()(image.double()),
                                              image.double())
        out = fastslice.retouch_pass(grid, image, guide, clamp=False)
        hwc = fastslice.retouch_pass(grid, image.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), guide, clamp=False)
    assert (out.double() - ref).abs().max() < 1e-5
    assert (hwc.double() - ref).abs().max() < 1e-5  # interleaved floats (the chunked loops)


@pytest.mark.parametrize("hwc", [True, False])
def test_retouch_pass_8bit_equals_the_float_pass_on_every_byte_value(cpu_ext, hwc):
    """The 8-bit pass reads v as v / 255 exactly as torch divides (the vector paths divide without a division
    instruction) and rounds as images.to_uint8 does: on a photo with every byte value in every channel it equals
    the float pass on photo / 255, rounded, bit for bit."""
    B, H, W, D, Hg, Wg = 1, 16, 61, 8, 3, 4
    gen = torch.Generator().manual_seed(13)
    values = torch.stack([torch.randperm(H * W, generator=gen) % 256 for _ in range(3)]).to(torch.uint8)
    photo = values.view(3, H, W)[None]  # (1, 3, H, W) planes
    if hwc:
        photo = photo.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # interleaved, as decoded
    grid = bilateral.identity_grid(B, D, Hg, Wg) + 0.3 * torch.randn(B, 12, D, Hg, Wg, generator=gen)
    guide = _curve_guide()
    with torch.no_grad():
        out8 = fastslice.retouch_pass(grid, photo, guide)
        outf = fastslice.retouch_pass(grid, (photo.float() / 255).contiguous(), guide)
    assert torch.equal(out8, (outf * 255 + 0.5).to(torch.uint8))
