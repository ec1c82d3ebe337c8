"""Fast slicing (lesson 02): fused slice-and-apply kernels, forward and backward.

The naive path of lesson 01 builds the full-resolution coefficients with
``F.grid_sample`` -- a ``(B, 12, H, W)`` tensor, 4x the image -- and then applies
them. The fused kernels here compute the same function (HDRNet's
``bilateral_slice_apply``; see ``course_lib.bilateral``) pixel by pixel and keep
only the image, the guide and the small grid in memory:

* ``slice_apply_triton``: Triton kernels (``course_lib.triton_slice``), chosen for
  CUDA tensors; with ``TRITON_INTERPRET=1`` they also run on CPU tensors (slowly).
* ``slice_apply_cpu``: C++/OpenMP kernels (``course_lib/csrc/bilateral_slice.cpp``),
  compiled with ninja on first use and cached under ``data/cache/``. Without a
  compiler it prints one line and falls back to the ``grid_sample`` path.

Both are wrapped in one ``torch.autograd.Function`` and agree with the reference
to 1e-5 in fp32, values and gradients. Shapes: grid ``(B, 12, D, Hg, Wg)`` with
channel ``c = 4 i + j`` (``j = 3`` the bias), guide ``(B, H, W)`` in [0, 1] (or
``(B, 1, H, W)``), image ``(B, 3, H, W)`` -> out ``(B, 3, H, W)``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from .bilateral import CurveGuide, register_fast_impl, slice_apply_grid_sample
from .config import CACHE_DIR
from .data import resize

#: The C++ source of the CPU kernels (found next to this file, also in an editable install).
CPP_SOURCE: Path = Path(__file__).resolve().parent / "csrc" / "bilateral_slice.cpp"

_cpu_ext: ModuleType | None = None
_cpu_error: str | None = None
_notified = False


class SliceOps(Protocol):
    """What a backend provides: the C++ extension module and ``triton_slice`` both do."""

    def forward(self, grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor: ...

    def backward(self, grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor,
                 grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


# ---------------------------------------------------------------------------------------------
# Building the CPU extension
# ---------------------------------------------------------------------------------------------

def _compile_flags(native: bool) -> tuple[list[str], list[str]]:
    """(cflags, ldflags). ``native``: tune for this CPU and use OpenMP threads."""
    if not native:
        return ["-O3"], []
    # no -mprefer-vector-width=512: on the course's AVX-512 machine the compiler's default
    # (256-bit vectors) measured 5 % faster forward and 7 % faster backward (lower clock
    # penalty), although a 16-float slab cell would fit one 512-bit register
    return ["-O3", "-fopenmp", "-march=native"], ["-fopenmp"]


def _build_dir(cflags: list[str]) -> Path:
    """A cache folder per torch version, CPU and flags (``-march=native`` builds are CPU-specific)."""
    key = "|".join([torch.__version__, platform.machine(), platform.processor(), _cpu_model(), *cflags])
    return CACHE_DIR / "torch_extensions" / f"bilateral_slice_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _ensure_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pip ``ninja`` lives next to the interpreter."""
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.append(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in dirs if d not in path] + path)


def _build(native: bool, verbose: bool) -> ModuleType:
    cflags, ldflags = _compile_flags(native)
    if native and os.environ.get("COURSE_CPP_PORTABLE", "").strip() in ("1", "true", "yes"):
        cflags = [f for f in cflags if not f.startswith("-march")]  # x86-64 baseline, OpenMP kept
    build_dir = _build_dir(cflags)
    build_dir.mkdir(parents=True, exist_ok=True)
    _ensure_ninja_on_path()
    # importing cpp_extension logs a warning about CUDA_HOME on machines without CUDA: not ours
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    if not any(build_dir.glob("*.so")) and not any(build_dir.glob("*.pyd")):
        print("fastslice: compiling the C++ kernel (first use, about 30 s) ...", file=sys.stderr, flush=True)
    return cpp_extension.load(name="course_bilateral_slice", sources=[str(CPP_SOURCE)], extra_cflags=cflags,
                              extra_ldflags=ldflags, build_directory=str(build_dir), verbose=verbose)


def missing_toolchain() -> str | None:
    """Why this machine cannot build C++ extensions at all (no compiler, no ninja), else ``None``."""
    import shutil

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} is not on PATH)"
    _ensure_ninja_on_path()
    if shutil.which("ninja") is None:
        return "no ninja build tool (pip install ninja)"
    return None


class KernelBuildError(RuntimeError):
    """The C++ kernel failed to compile with a working toolchain: a bug, not a missing tool."""


def load_cpu_extension(verbose: bool = False) -> ModuleType | None:
    """Compile (first use) or load (cached) the C++ kernels.

    Tries OpenMP + ``-march=native`` first, then plain ``-O3`` (``COURSE_CPP_PORTABLE=1``: OpenMP without
    ``-march=native``, to test the portable loops on a machine whose compiler would use AVX-512). A machine without a compiler
    (or ninja) gets ``None`` and the reason (:func:`cpu_extension_error`): the callers fall back
    to the grid_sample path and say so in one line. A kernel that does not compile with a working
    toolchain is a bug, and raises :class:`KernelBuildError`.

    Args:
        verbose: show the compiler's output.

    Returns:
        The extension module (``forward``, ``backward``), or ``None``.
    """
    global _cpu_ext, _cpu_error
    if _cpu_ext is not None or _cpu_error is not None:
        return _cpu_ext
    if os.environ.get("COURSE_NO_CPP_EXT", "").strip() in ("1", "true", "yes"):
        _cpu_error = "disabled by COURSE_NO_CPP_EXT"
        return None
    missing = missing_toolchain()
    if missing is not None:
        _cpu_error = missing
        return None
    try:
        _cpu_ext = _build(True, verbose)
    except (RuntimeError, OSError, ImportError) as first:  # e.g. a flag this compiler rejects: try plain -O3
        try:
            _cpu_ext = _build(False, verbose)
        except (RuntimeError, OSError, ImportError) as exc:
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KernelBuildError(f"the C++ slicing kernel does not build ({why[:200]}); "
                                   f"with -march=native: {str(first).strip().splitlines()[-1][:120] if str(first).strip() else ''}. "
                                   "Set COURSE_NO_CPP_EXT=1 to use the grid_sample path") from None
    return _cpu_ext


def cpu_extension_error() -> str | None:
    """Why the C++ kernels are unavailable (``None`` if they loaded or were never tried)."""
    return _cpu_error


def _reset_cpu_extension() -> None:
    """Forget the loaded or failed extension (tests use this to simulate a missing compiler)."""
    global _cpu_ext, _cpu_error, _notified
    _cpu_ext, _cpu_error, _notified = None, None, False


def triton_available() -> bool:
    """True when Triton can run here: a CUDA GPU, or ``TRITON_INTERPRET=1`` (CPU tensors)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_impls() -> list[str]:
    """Names of the fused implementations usable on this machine, fastest first.

    ``"triton"`` needs a CUDA GPU (or the interpreter); ``"cpu"`` needs the C++
    extension (this call compiles it on first use).
    """
    impls = []
    if triton_available() and torch.cuda.is_available():
        impls.append("triton")
    if load_cpu_extension() is not None:
        impls.append("cpu")
    return impls


# ---------------------------------------------------------------------------------------------
# The autograd wrapper, shared by both backends
# ---------------------------------------------------------------------------------------------

class FusedSliceApply(torch.autograd.Function):
    """``out = slice_apply(grid, guide, image)`` with a fused backend's forward and backward."""

    @staticmethod
    def forward(ctx: Any, ops: SliceOps, grid: torch.Tensor, guide: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        ctx.ops = ops
        ctx.save_for_backward(grid, guide, image)
        return ops.forward(grid, guide, image)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, torch.Tensor | None, ...]:
        grid, guide, image = ctx.saved_tensors
        d_grid, d_guide, d_image = ctx.ops.backward(grid, guide, image, grad_out.contiguous())
        need = ctx.needs_input_grad
        return (None, d_grid if need[1] else None, d_guide if need[2] else None, d_image if need[3] else None)


def _prepare(grid: torch.Tensor, guide: torch.Tensor,
             image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes; return contiguous tensors of one floating dtype (differentiably)."""
    if guide.dim() == 4 and guide.shape[1] == 1:
        guide = guide[:, 0]  # (B, 1, H, W) -> (B, H, W)
    if grid.dim() != 5 or grid.shape[1] != 12:
        raise ValueError(f"grid must be (B, 12, D, Hg, Wg), got {tuple(grid.shape)}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    B, _, H, W = image.shape
    if guide.shape != (B, H, W) or grid.shape[0] != B:
        raise ValueError(f"guide {tuple(guide.shape)} / grid {tuple(grid.shape)} do not match image {tuple(image.shape)}")
    if not (grid.device == guide.device == image.device):
        raise ValueError("grid, guide and image must be on one device")
    dtype = torch.promote_types(torch.promote_types(grid.dtype, guide.dtype), image.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return grid.to(dtype).contiguous(), guide.to(dtype).contiguous(), image.to(dtype).contiguous()


def _grid_sample_path(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The unfused path of lesson 01: ``grid_sample`` to full-res coefficients, then apply."""
    return slice_apply_grid_sample(grid, guide, image)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------

def slice_apply_cpu(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused slice-and-apply with the C++ kernels (CPU tensors), differentiable.

    Falls back, with a one-line notice, to the ``grid_sample`` path when the
    extension cannot be built.

    Args:
        grid: (B, 12, D, Hg, Wg) affine coefficients, channel ``4 i + j``.
        guide: (B, H, W) or (B, 1, H, W), values in [0, 1].
        image: (B, 3, H, W).
        out: optional (B, 3, H, W) buffer of the result's dtype to write into (no gradients then):
            reusing a buffer saves the page faults of a fresh full-resolution allocation.

    Returns:
        (B, 3, H, W) in the promoted dtype of the inputs (``out`` itself when given).
    """
    global _notified
    grid, guide, image = _prepare(grid, guide, image)
    if image.device.type != "cpu":
        raise ValueError(f"slice_apply_cpu needs CPU tensors, got {image.device}")
    ext = load_cpu_extension()
    if ext is None:
        if not _notified:
            print(f"fastslice: C++ kernel unavailable ({_cpu_error}); using the grid_sample path", file=sys.stderr)
            _notified = True
        result = _grid_sample_path(grid, guide, image)
        return result if out is None else out.copy_(result)
    if out is not None:
        if torch.is_grad_enabled() and (grid.requires_grad or guide.requires_grad or image.requires_grad):
            raise RuntimeError("slice_apply_cpu(out=...) does not record gradients: call it under torch.no_grad()")
        return ext.forward(grid, guide, image, out=out)
    return FusedSliceApply.apply(ext, grid, guide, image)


# ---------------------------------------------------------------------------------------------
# From photo to result in one pass (inference)
# ---------------------------------------------------------------------------------------------

def resize_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The taps of torch's antialiased bilinear resize along one axis (``F.interpolate(...,
    mode="bilinear", antialias=True, align_corners=False)``).

    Output ``i`` is centred at ``c = s (i + 1/2)`` in input pixels, ``s = in / out``; its tent filter
    is ``max(s, 1)`` pixels wide on each side: ``w_j = max(1 - |j + 1/2 - c| / max(s, 1), 0)`` over
    input pixels ``j``, normalised to sum to 1.

    Returns:
        ``(start, weights)``: (out_size,) int64 first input index, (out_size, K) float32 weights
        of inputs ``start .. start + K - 1`` (zeros past each support).
    """
    s = in_size / out_size
    support = s if s >= 1.0 else 1.0  # (interp size 2) / 2 * max(s, 1)
    inv = 1.0 / s if s >= 1.0 else 1.0
    c = s * (torch.arange(out_size, dtype=torch.float64) + 0.5)  # (out,)
    start = (c - support + 0.5).trunc().long().clamp(min=0)  # (out,)
    stop = (c + support + 0.5).trunc().long().clamp(max=in_size)  # (out,)
    K = int((stop - start).max())
    j = start[:, None] + torch.arange(K)  # (out, K) input indices
    # w = max(1 - |j + 1/2 - c| / max(s, 1), 0) inside [start, stop)
    w = (1 - ((j + 0.5 - c[:, None]) * inv).abs()).clamp(min=0) * (j < stop[:, None])
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return start, w.float()


def resize_fast(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The network's input straight from the photo: the antialiased bilinear resize of
    :func:`course_lib.data.resize` (same taps), in one C++ pass, reading 8-bit or float pixels.

    No full-resolution float copy: each output row sums its input rows into one row of floats,
    then filters that row along x.

    Args:
        image: (B, 3, H, W), uint8 (0..255) or float32 (in [0, 1]), any strides (a (B, H, W, 3)
            photo permuted to (B, 3, H, W) is read as it is).
        size: (h, w).

    Returns:
        (B, 3, h, w) float32 in [0, 1]; equal to ``resize(image.float() / 255, size)`` (or of the
        float image) to float rounding.
    """
    h, w = size
    ext = load_cpu_extension()
    if ext is None or image.device.type != "cpu" or image.dtype not in (torch.uint8, torch.float32):
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        return resize(x, (h, w))
    ymin, wy = resize_weights(image.shape[-2], h)
    xmin, wx = resize_weights(image.shape[-1], w)
    return ext.resize(image, ymin, wy, xmin, wx)


def retouch_pass(grid: torch.Tensor, image: torch.Tensor, guide: Any, out: torch.Tensor | None = None,
                 clamp: bool = True, impl: str = "auto") -> torch.Tensor:
    """One pass from photo to result: per pixel the guide, the trilinear slice, the 3x4 affine,
    clamp (and rounding for 8-bit photos). Inference only (no gradients).

    Args:
        grid: (B, 12, D, Hg, Wg) affine grid.
        image: (B, 3, H, W) uint8 (0..255) or float32 (in [0, 1]), any strides: a decoded
            (B, H, W, 3) photo permuted to (B, 3, H, W) is read in place.
        guide: a :class:`course_lib.bilateral.CurveGuide` (computed per pixel inside the pass), or
            a (B, H, W) guide map, or any other module ``image -> (B, H, W)`` (evaluated first on
            the float image: one full-resolution float plane).
        out: optional buffer like ``image`` (same shape and dtype, any strides) to write into.
        clamp: clip float results to [0, 1] (8-bit results are always clipped and rounded).
        impl: ``"auto"`` (the Triton kernel for CUDA tensors with a CurveGuide, else the C++ pass),
            ``"triton"`` (also CPU tensors under ``TRITON_INTERPRET=1``) or ``"cpu"``.

    Returns:
        (B, 3, H, W) of ``image``'s dtype, laid out like ``image`` (``out`` when given). 8-bit values
        are ``floor(255 clamp(v, 0, 1) + 1/2)`` of the float result ``v``
        (:func:`course_lib.images.to_uint8`).
    """
    if image.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"retouch_pass takes uint8 or float32 images, not {image.dtype}")
    if impl == "triton" or (impl == "auto" and image.is_cuda and triton_available()):
        if not isinstance(guide, CurveGuide) or not clamp:
            raise ValueError("the Triton pass takes a CurveGuide and clamps its results")
        from . import triton_slice

        return triton_slice.retouch(grid, image, guide, out=out)
    ext = load_cpu_extension()
    if ext is None or image.device.type != "cpu":
        # no C++ kernel (or not a CPU tensor): the same result through lesson 01's operations
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        g = guide if isinstance(guide, torch.Tensor) else guide(x)
        res = slice_apply_fused(grid.to(x.dtype), g, x) if ext is not None else _grid_sample_path(grid, g, x)
        if image.dtype == torch.uint8:
            res = (res.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        elif clamp:
            res = res.clamp(0, 1)
        return res if out is None else out.copy_(res)
    empty = torch.empty(0)
    if isinstance(guide, CurveGuide):
        return ext.retouch(grid, image, None, guide.ccm, guide.ccm_bias, guide.shifts, guide.slopes, guide.mix,
                           float(guide.mix_bias.detach()), clamp, out=out)
    if not isinstance(guide, torch.Tensor):
        with torch.no_grad():
            guide = guide(image.float() / 255.0 if image.dtype == torch.uint8 else image)
    if guide.dim() == 4:
        guide = guide[:, 0]
    return ext.retouch(grid, image, guide, empty, empty, empty, empty, empty, 0.0, clamp, out=out)


def slice_apply_triton(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Fused slice-and-apply with the Triton kernels, differentiable.

    CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` (set before
    Triton is first imported). Computes in fp32 whatever the input dtype.

    Args:
        grid: (B, 12, D, Hg, Wg). guide: (B, H, W) or (B, 1, H, W). image: (B, 3, H, W).

    Returns:
        (B, 3, H, W) in the promoted dtype of the inputs.
    """
    grid, guide, image = _prepare(grid, guide, image)
    if image.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("slice_apply_triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    from . import triton_slice

    return FusedSliceApply.apply(triton_slice, grid, guide, image)


def slice_apply_fused(grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The best fused kernel for the tensors' device: Triton on CUDA, C++ on CPU."""
    if image.device.type == "cuda" and triton_available():
        return slice_apply_triton(grid, guide, image)
    return slice_apply_cpu(grid, guide, image)


def frame_cost(height: int, width: int, dtype: torch.dtype = torch.float32, depth: int = 8,
               grid_h: int = 16, grid_w: int = 16, batch: int = 1) -> dict[str, float]:
    """Bytes and FLOPs of one fused slice-and-apply call (the roofline's two axes).

    Args:
        height, width: image size. dtype: element type of image, guide and output.
        depth, grid_h, grid_w: grid size. batch: images per call.

    Returns:
        ``bytes`` (read RGB + guide + grid, write RGB), ``grid_bytes``, ``flops``
        (8 corners x (12 coefficient multiply-adds + 3 weights) + 9 multiply-adds
        and 3 adds of the affine, counting a multiply-add as 2), and
        ``intensity`` (FLOPs per byte).
    """
    px = batch * height * width
    item = torch.empty((), dtype=dtype).element_size()
    grid_bytes = batch * 12 * depth * grid_h * grid_w * item
    # read r, g, b, guide; write r, g, b
    nbytes = px * (3 + 1 + 3) * item + grid_bytes
    # per pixel: 8 corners x (2 weight products + 12 FMA), then 9 FMA + 3 adds for the affine
    flops = px * (8 * (2 + 2 * 12) + 2 * 9 + 3)
    return {"bytes": float(nbytes), "grid_bytes": float(grid_bytes), "flops": float(flops),
            "intensity": flops / nbytes}


def timed(fn: Any, *args: Any, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after ``warmup`` calls (syncs CUDA)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn(*args)
    sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Offer the fused kernels to lesson 01's dispatcher (bilateral.slice_apply(impl="auto")).
register_fast_impl("cpu", slice_apply_cpu, lambda: "cpu" in available_impls())
register_fast_impl("triton", slice_apply_triton, lambda: "triton" in available_impls())
