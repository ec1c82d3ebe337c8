"""``python -m course_lib gpu-check``: the GPU acceptance check, one command, one report, under 8 minutes.

On a CUDA machine it runs four steps, each in its own subprocess with a time budget (a
CUDA error or a hang in one step cannot take the others down), and writes one Markdown
report (default ``outputs/gpu_check/report-<timestamp>.md``; never overwrites a file):

1. ``kernels`` - the Triton slicing kernels (:mod:`course_lib.triton_slice`) against the
   float64 PyTorch reference (:func:`course_lib.bilateral.slice_apply_reference`) in fp32,
   fp16 and bf16, values and gradients, at odd shapes, 1080p and 4K.
2. ``bench`` - slice-and-apply (naive ``grid_sample`` and Triton) at 1080p and 4K, fp32 and
   fp16, forward and forward+backward, timed with CUDA events (L2 flushed before each call),
   against a memory floor from a device-to-device copy measured in the same run.
3. ``student`` - the shipped student end to end on a 1080p photo: checkpoint load, text
   encoding, grid prediction, guide, slice + apply; warm-up, then the median.
4. ``nbval`` - ``COURSE_MODE=fast COURSE_DEVICE=cuda python -m pytest solutions/02_*.ipynb ...
   solutions/05_*.ipynb`` with a timeout, cell pass/fail counts per notebook.

A failing step is reported as FAILED with a one-line reason and the next step runs; the
exit code is 1 if any step failed. Without CUDA it prints one line and exits 0.

Testing without a GPU (hidden options, used by ``tests/test_gpu_check.py``): ``--tiny``
shrinks every size; ``--device cpu --tiny`` runs steps 1-3 on the CPU with
``TRITON_INTERPRET=1`` (the Triton interpreter) and writes the same report, marked as a
dry run; ``--nbval-paths A.ipynb,B.ipynb`` points step 4 at other notebooks (in a CPU dry
run step 4 is skipped unless given). ``--worker STEP`` is the subprocess side of a step.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import config
from ..bench import PLANES, copy_bandwidth, parse_size, pass_call, random_inputs
from ..bilateral import slice_apply, slice_apply_grid_sample, slice_apply_reference
from ..fastslice import frame_cost, slice_apply_triton, triton_available
from ..student import featurise, load_student, retouch_fused, shipped_path
from ..text import shared_encoder

#: The steps, in order: name -> title in the report.
STEPS: dict[str, str] = {
    "kernels": "Triton kernels vs the PyTorch reference (fp32, fp16, bf16; values and gradients)",
    "bench": "Slicing benchmark vs the memory-bandwidth floor",
    "student": "Shipped student, end to end",
    "nbval": "Lessons 02-05 under nbval (FAST mode)",
    "hub": "Hub tier at real size: InstructPix2Pix-sized random pipeline, one step at 512 px",
}
#: Wall-clock budget of each step in seconds (the subprocess is killed when it runs over).
BUDGETS: dict[str, float] = {"kernels": 60.0, "bench": 75.0, "student": 45.0, "nbval": 190.0, "hub": 98.0}
#: The hub-tier commands step 5 runs (``python -m course_lib hub-check --only ...``; all of them: make hub-check).
HUB_COMMANDS = ("teacher-eval", "train-vsd")
#: The whole run stays under this (8 minutes), whatever ``--budget`` says.
TOTAL_BUDGET_S = 480.0
#: Seconds kept back at the end of the total budget (writing the report, process start-up).
RESERVE_S = 12.0
#: The lessons step 4 runs (globs under ``solutions/``).
NBVAL_GLOBS = ("02_*.ipynb", "03_*.ipynb", "04_*.ipynb", "05_*.ipynb")

#: Sizes of each step: the real check, and the tiny dry run (the Triton interpreter runs about
#: 0.1 s per 256-pixel program, so tiny frames have only a few programs).
#: kernels: (B, H, W, D, Hg, Wg); bench: frames; student: one frame.
PROFILES: dict[str, dict] = {
    "full": {"kernels": [(2, 37, 53, 8, 5, 7), (1, 17, 20, 1, 1, 1), (3, 9, 31, 4, 16, 12),
                         (2, 1080, 1920, 8, 16, 16), (1, 2160, 3840, 8, 16, 16)],
             "bench": ["1080p", "4k"], "bench_repeats": 20, "bench_warmup": 3, "copy_mib": 1024,
             "student": "1080p", "student_repeats": 10, "student_warmup": 3},
    "tiny": {"kernels": [(2, 9, 13, 4, 3, 5), (1, 11, 23, 1, 1, 1)],
             "bench": ["16x12", "24x10"], "bench_repeats": 1, "bench_warmup": 0, "copy_mib": 16,
             "student": "16x12", "student_repeats": 1, "student_warmup": 1},
}
KERNEL_DTYPES = ("float32", "float16", "bfloat16")
BENCH_DTYPES = ("float32", "float16")
#: Base tolerance of ``max |a - b| / (1 + |b|)`` per dtype: fp32 arithmetic for fp32; for fp16
#: (unit roundoff 2^-11 = 4.9e-4) and bf16 (2^-8 = 3.9e-3) the kernels compute in fp32 on the
#: same rounded inputs and round once at the end, so about twice the unit roundoff (bf16 a
#: little more: the Triton interpreter truncates instead of rounding to nearest).
BASE_TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
#: Extra fp32 error: d guide = D d gz multiplies the rounding of d gz by D; d grid is a sum of
#: thousands of pixels per cell accumulated with fp32 atomics in no fixed order.
FP32_EXTRA = {"out": 0.0, "d image": 0.0, "d guide": 1e-5, "d grid": 1e-4}
#: Peak memory of the float64 reference with autograd, per pixel (measured about 1.5 kB): a case
#: that would not fit in the GPU's free memory is skipped (and said so) rather than run out of memory.
REF_BYTES_PER_PIXEL = 2048
NO_CUDA_LINE = "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
#: Prefix of the lines a worker prints for its parent (one JSON object each).
MARK = "@@gpu-check "


def tolerance(dtype: str, quantity: str, depth: int) -> float:
    """Tolerance of ``max |a - b| / (1 + |b|)`` for one checked quantity (see :data:`BASE_TOL`)."""
    extra = FP32_EXTRA[quantity] * (depth if quantity == "d guide" else 1)
    return BASE_TOL[dtype] + extra


# =============================================================================================
# Timing helpers (the worker side)
# =============================================================================================

def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device, repeats: int, warmup: int,
               before: Callable[[], object] | None = None) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn()`` after ``warmup`` calls.

    On CUDA each call is bracketed by CUDA events (GPU time, no launch-to-sync slack); on the
    CPU by ``time.perf_counter``. ``before()`` runs before every call, outside the timing
    (used to flush the L2 cache).
    """
    import torch

    for _ in range(warmup):
        if before:
            before()
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        if before:
            before()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def wall_calls(fn: Callable[[], object], device, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of wall time per call (``perf_counter`` around the call and a device sync):
    for work that mixes CPU and GPU, such as text encoding followed by the network."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return times


# =============================================================================================
# Step 1: kernels against the reference
# =============================================================================================

def _rel_err(a, b) -> float:
    """``max |a - b| / (1 + |b|)`` in float64 (0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return float(((a.double() - b).abs() / (1 + b.abs())).max())


def check_kernels(device, shapes: list[tuple[int, ...]], dtypes=KERNEL_DTYPES,
                  emit: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Triton slice-and-apply against the float64 reference, values and the three gradients.

    Both sides see the same rounded inputs and the same rounded ``d out``, so the error
    measures the kernel, not the rounding of its inputs.

    Args:
        device: where the tensors live (CUDA; CPU only under ``TRITON_INTERPRET=1``).
        shapes: (B, H, W, D, Hg, Wg) cases.
        dtypes: names of torch dtypes.
        emit: called with each row as soon as it is known.

    Returns:
        Rows ``shape, dtype, quantity, err, tol, ok, note``.
    """
    import torch

    rows = []
    for shape in shapes:
        B, H, W, D, Hg, Wg = shape
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            need = REF_BYTES_PER_PIXEL * B * H * W
            if need > 0.8 * free:
                for name in dtypes:
                    row = {"shape": "x".join(map(str, shape)), "dtype": name, "quantity": "all", "err": None,
                           "tol": None, "ok": None, "note": f"skipped: the float64 reference needs about "
                                                            f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"}
                    rows.append(row)
                    emit(row)
                continue
        gen = torch.Generator().manual_seed(B * 1000 + H * 10 + W)
        grid = torch.randn(B, 12, D, Hg, Wg, generator=gen, dtype=torch.float64)
        guide = torch.rand(B, H, W, generator=gen, dtype=torch.float64)
        guide[0, 0, : max(1, W // 2)] = 0.0  # both ends of the guide range
        guide[-1, -1, W // 2:] = 1.0
        image = torch.rand(B, 3, H, W, generator=gen, dtype=torch.float64)
        dout = torch.randn(B, 3, H, W, generator=gen, dtype=torch.float64)
        for name in dtypes:
            dtype = getattr(torch, name)
            low = [t.to(dtype).to(device) for t in (grid, guide, image, dout)]
            ref_in = [t.double().requires_grad_(True) for t in low[:3]]
            ref = slice_apply_reference(*ref_in)
            ref_grads = torch.autograd.grad(ref, ref_in, low[3].double())
            ins = [t.clone().requires_grad_(True) for t in low[:3]]
            out = slice_apply_triton(*ins)
            grads = torch.autograd.grad(out, ins, low[3])
            _sync(device)
            for quantity, a, b in zip(("out", "d grid", "d guide", "d image"), (out, *grads),
                                      (ref.detach(), *ref_grads)):
                tol = tolerance(name, quantity, D)
                err = _rel_err(a.detach(), b)
                notes = []
                if a.dtype != dtype:
                    notes.append(f"dtype {str(a.dtype).replace('torch.', '')}")
                if not bool(a.isfinite().all()):
                    notes.append("non-finite values")
                row = {"shape": "x".join(map(str, shape)), "dtype": name, "quantity": quantity, "err": err,
                       "tol": tol, "ok": err <= tol and not notes, "note": ", ".join(notes)}
                rows.append(row)
                emit(row)
            del low, ref_in, ref, ref_grads, ins, out, grads
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# =============================================================================================
# Step 2: the slicing benchmark
# =============================================================================================

def bench_slice(device, sizes: list[str], dtypes=BENCH_DTYPES, repeats: int = 20, warmup: int = 3,
                copy_mib: int = 1024, grid_shape: tuple[int, int, int] = (8, 16, 16),
                emit: Callable[[dict], None] = lambda row: None,
                info: Callable[[dict], None] = lambda d: None) -> list[dict]:
    """Naive ``grid_sample`` and Triton slice-and-apply, forward and forward+backward, per size and dtype.

    The floor of a call is the bytes it must move (:data:`course_lib.bench.PLANES` planes of
    ``H x W`` values in the dtype, plus the grid) at the copy bandwidth measured first.

    Returns:
        Rows ``size, mp, dtype, impl, pass, ms, min_ms, floor_ms, off_floor, GBps, speedup``.
    """
    import torch

    bandwidth = copy_bandwidth(device, copy_mib << 20, repeats=10 if device.type == "cuda" else 5,
                               inner=5 if device.type == "cuda" else 1)
    info({"bandwidth_GBps": bandwidth / 1e9, "copy_MiB": copy_mib, "grid": "x".join(map(str, grid_shape)),
          "repeats": repeats, "warmup": warmup,
          "timer": "CUDA events, L2 flushed before each call" if device.type == "cuda" else "time.perf_counter"})
    flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None
    flush = (lambda: flush_buf.zero_()) if flush_buf is not None else None
    impls = {"naive": slice_apply_grid_sample, "triton": slice_apply_triton}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for text in sizes:
        W, H = parse_size(text)
        grid32, guide32, image32 = random_inputs(1, H, W, grid_shape, device, gen)
        dout32 = torch.randn(image32.shape, generator=gen).to(device)
        for name in dtypes:
            dtype = getattr(torch, name)
            grid, guide, image, dout = (t.to(dtype) for t in (grid32, guide32, image32, dout32))
            cost = frame_cost(H, W, dtype, *grid_shape)
            item = image.element_size()
            naive_ms: dict[str, float] = {}
            for impl, fn in impls.items():
                for ps in ("fwd", "fwd+bwd"):
                    call = pass_call(fn, ps, grid, guide, image, dout)
                    times = time_calls(call, device, repeats, warmup, before=flush)
                    ms = statistics.median(times)
                    nbytes = PLANES[ps] * H * W * item + cost["grid_bytes"] * (1 if ps == "fwd" else 3)
                    floor_ms = 1e3 * nbytes / bandwidth
                    if impl == "naive":
                        naive_ms[ps] = ms
                    row = {"size": text, "wxh": f"{W}x{H}", "mp": H * W / 1e6, "dtype": name, "impl": impl,
                           "pass": ps, "ms": ms, "min_ms": min(times), "floor_ms": floor_ms,
                           "off_floor": ms / floor_ms, "GBps": nbytes / (ms / 1e3) / 1e9,
                           "speedup": naive_ms[ps] / ms if impl != "naive" and ps in naive_ms else None}
                    rows.append(row)
                    emit(row)
            del grid, guide, image, dout
        del grid32, guide32, image32, dout32
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# =============================================================================================
# Step 3: the student end to end
# =============================================================================================

def time_student(device, size: str = "1080p", repeats: int = 10, warmup: int = 3,
                 instruction: str = "make it warmer and brighten the shadows",
                 emit: Callable[[dict], None] = lambda row: None,
                 info: Callable[[dict], None] = lambda d: None) -> list[dict]:
    """Time the shipped student on one frame: each stage, then the whole, warm-up then median.

    Stages: checkpoint load and text-encoder load (once each), text encoding without the
    embedding cache, grid prediction, the guide, slice + apply (the Triton kernel where it
    runs, else what ``slice_apply(impl="auto")`` picks), and end to end with and without the
    cache (and with the photo's transfer to and from the device).

    Returns:
        Rows ``stage, runs, ms, min_ms, note``.
    """
    import torch

    rows: list[dict] = []

    def add(stage: str, times: list[float], note: str = "") -> None:
        row = {"stage": stage, "runs": len(times), "ms": statistics.median(times), "min_ms": min(times), "note": note}
        rows.append(row)
        emit(row)

    W, H = parse_size(size)
    torch.zeros(1, device=device)  # create the CUDA context before timing the load
    _sync(device)
    t0 = time.perf_counter()
    model = load_student(device=device)
    _sync(device)
    add("load shipped checkpoint", [1e3 * (time.perf_counter() - t0)], f"{shipped_path().name}, once")
    enc = shared_encoder(model.cfg.text_encoder)
    t0 = time.perf_counter()
    enc._encode([instruction])  # loads the encoder's weights: the first call, not cached
    add("load text encoder + first encoding", [1e3 * (time.perf_counter() - t0)], f"{enc.name}, once")
    use_triton = triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if use_triton:
        slicer, impl = slice_apply_triton, "triton"
    else:
        slicer, impl = (lambda g, gd, im: slice_apply(g, gd, im, impl="auto")), "auto (no Triton here)"
    info({"size": f"{W}x{H}", "device": str(device), "slice_impl": impl, "instruction": instruction,
          "checkpoint": shipped_path().name, "text_encoder": enc.name, "repeats": repeats, "warmup": warmup})
    photo = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    image = photo.to(device)
    with torch.no_grad():
        text = model.embed([instruction])  # fills the cache
        grid = model.predict_grid(image, text)
        guide = model.guide_map(image, rows_per_chunk=512)

        def encode():
            # what Student.embed does, with the sentence embedding computed afresh (no cache)
            return featurise([instruction], model.cfg, encode=enc._encode).to(device)

        def edit(img, txt):
            g = model.predict_grid(img, txt)
            return slicer(g, model.guide_map(img, rows_per_chunk=512), img).clamp(0, 1)

        add("text encoding (uncached)", wall_calls(encode, device, repeats, warmup), f"{enc.name}, on its own device")
        add("predict grid", wall_calls(lambda: model.predict_grid(image, text), device, repeats, warmup),
            f"net {model.cfg.net_size}² -> grid 12x{model.cfg.luma_bins}x{model.cfg.grid_size}x{model.cfg.grid_size}")
        add("guide map", wall_calls(lambda: model.guide_map(image, rows_per_chunk=512), device, repeats, warmup),
            model.cfg.guide)
        add("slice + apply", wall_calls(lambda: slicer(grid, guide, image), device, repeats, warmup), impl)
        add("end to end, cached text", wall_calls(lambda: edit(image, model.embed([instruction])), device, repeats,
                                                 warmup), "as retouch/studio run it (embedding cache hit)")
        add("end to end, uncached text", wall_calls(lambda: edit(image, encode()), device, repeats, warmup),
            "text encoding + the network + slice")
        add("end to end + photo transfers", wall_calls(lambda: edit(photo.to(device), encode()).cpu(), device,
                                                      repeats, warmup), "photo host->device, result device->host")
        photo8 = (photo * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).to(device)
        add("8-bit photo -> 8-bit result, one pass", wall_calls(lambda: retouch_fused(model, photo8, text), device,
                                                                repeats, warmup),
            "student.retouch_fused: network input, grid, one pass (Triton on CUDA, C++ on the CPU)")
    return rows


# =============================================================================================
# The worker (one step in a subprocess) and the parent's side of it
# =============================================================================================

def _emit(kind: str, payload: dict) -> None:
    print(MARK + json.dumps({"kind": kind, **payload}), flush=True)


def worker(step: str, device_name: str, tiny: bool) -> int:
    """Run one of steps 1-3 here, printing its rows as ``MARK`` JSON lines for the parent."""
    import torch

    device = torch.device(device_name)
    prof = PROFILES["tiny" if tiny else "full"]
    row = lambda r: _emit("row", r)  # noqa: E731
    info = lambda d: _emit("info", d)  # noqa: E731
    try:
        if step == "kernels":
            info({"shapes": ["x".join(map(str, s)) for s in prof["kernels"]], "dtypes": list(KERNEL_DTYPES)})
            check_kernels(device, prof["kernels"], KERNEL_DTYPES, emit=row)
        elif step == "bench":
            bench_slice(device, prof["bench"], BENCH_DTYPES, prof["bench_repeats"], prof["bench_warmup"],
                        prof["copy_mib"], emit=row, info=info)
        elif step == "student":
            time_student(device, prof["student"], prof["student_repeats"], prof["student_warmup"], emit=row, info=info)
        else:
            raise ValueError(f"unknown worker step {step!r}")
    except BaseException as exc:  # report why in one line, then fail
        _emit("error", {"reason": _one_line(f"{type(exc).__name__}: {exc}")})
        import traceback

        traceback.print_exc()
        return 1
    _emit("done", {})
    return 0


@dataclass
class StepResult:
    """What one step produced, for the report."""

    name: str
    status: str = "PENDING"  # PASSED, FAILED, SKIPPED or PENDING
    reason: str = ""
    wall_s: float = 0.0
    budget_s: float = 0.0
    rows: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    log_tail: str = ""
    command: str = ""


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run(cmd: list[str], timeout: float, env: dict[str, str], cwd: Path) -> tuple[int | None, str, str, bool]:
    """Run ``cmd`` in its own process group; on timeout (or Ctrl-C) kill the whole group.

    Returns:
        (exit code or None when killed, stdout, stderr, timed_out).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return None, out or "", err or "", True
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started (kernels of nbval too)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _step_env(device: str, tiny: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(config.REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["COURSE_DEVICE"] = device
    env.setdefault("PYTHONUNBUFFERED", "1")
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: set before Triton's import
        if tiny:
            env["COURSE_NO_CPP_EXT"] = "1"  # no 30 s compile of the C++ kernels in a dry run
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def run_worker_step(step: str, device: str, tiny: bool, timeout: float) -> StepResult:
    """Steps 1-3: run :func:`worker` in a subprocess with ``timeout`` seconds and judge its rows."""
    res = StepResult(step, budget_s=timeout)
    cmd = [sys.executable, "-m", "course_lib.harness.gpu_check", "--worker", step, "--device", device] + (["--tiny"] if tiny else [])
    res.command = " ".join(cmd[1:])
    t0 = time.perf_counter()
    rc, out, err, timed_out = _run(cmd, timeout, _step_env(device, tiny), config.REPO_ROOT)
    res.wall_s = time.perf_counter() - t0
    done, error = False, ""
    for line in out.splitlines():
        if not line.startswith(MARK):
            continue
        try:
            msg = json.loads(line[len(MARK):])
        except json.JSONDecodeError:
            continue
        kind = msg.pop("kind", "")
        if kind == "row":
            res.rows.append(msg)
        elif kind == "info":
            res.info.update(msg)
        elif kind == "error":
            error = msg.get("reason", "")
        elif kind == "done":
            done = True
    bad = [r for r in res.rows if r.get("ok") is False]
    if timed_out:
        res.status, res.reason = "FAILED", f"timed out after its {timeout:.0f} s budget ({len(res.rows)} rows done)"
    elif error:
        res.status, res.reason = "FAILED", error
    elif rc != 0 or not done:
        last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "no output")
        res.status, res.reason = "FAILED", _one_line(f"worker exited with code {rc}: {last}")
    elif bad:
        worst = max(bad, key=lambda r: r["err"] / r["tol"] if r["tol"] else math.inf)
        res.status = "FAILED"
        res.reason = (f"{len(bad)} of {len(res.rows)} checks out of tolerance (worst: {worst['quantity']} "
                      f"{worst['dtype']} {worst['shape']}: {worst['err']:.2e} > {worst['tol']:.1e}"
                      f"{'; ' + worst['note'] if worst.get('note') else ''})")
    elif not res.rows:
        res.status, res.reason = "FAILED", "the worker produced no results"
    else:
        res.status = "PASSED"
        skipped = [r for r in res.rows if r.get("ok", False) is None]
        if skipped:
            res.reason = f"{len(skipped)} of {len(res.rows)} rows skipped ({skipped[0].get('note', '')})"
    if res.status == "FAILED":
        res.log_tail = _tail(err)
    return res


#: A ``pytest -v`` result line of one nbval cell (the path before ``::`` varies with pytest's rootdir).
NBVAL_LINE = re.compile(r"::(?P<cell>Cell \d+)\s+(?P<st>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
#: pytest's closing line, e.g. ``==== 1 failed, 12 passed in 30.1s ====``.
SUMMARY_LINE = re.compile(r"^=+ (?P<text>.*\bin [\d.]+s.*?) =+$")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COUNT_KEYS = {"passed": "passed", "xpassed": "passed", "failed": "failed", "error": "errors", "errors": "errors",
              "skipped": "skipped", "xfailed": "skipped", "deselected": "skipped"}


def nbval_paths() -> list[Path]:
    """The lesson notebooks of step 4: ``solutions/02_*.ipynb`` ... ``05_*.ipynb``."""
    out: list[Path] = []
    for pattern in NBVAL_GLOBS:
        out += sorted((config.REPO_ROOT / "solutions").glob(pattern))
    return out


def parse_pytest(out: str) -> dict:
    """Cell counts of one nbval run: from pytest's summary line when it finished, else from the
    ``-v`` lines printed so far (a run cut off by its timeout). Also the first failing cell."""
    row = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "first_failure": "", "summary": ""}
    lines = ANSI.sub("", out).splitlines()
    for line in lines:
        m = NBVAL_LINE.search(line)
        if m:
            key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors"}.get(m["st"], "skipped")
            row[key] += 1
            if key in ("failed", "errors") and not row["first_failure"]:
                row["first_failure"] = m["cell"]
    summary = next((m["text"] for ln in reversed(lines) if (m := SUMMARY_LINE.match(ln.strip()))), "")
    if summary:
        row["summary"] = summary
        counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        for n, word in re.findall(r"(\d+) (\w+)", summary.split(" in ")[0]):
            if word in COUNT_KEYS:
                counts[COUNT_KEYS[word]] += int(n)
        row.update(counts)
    return row


_HUB_LINE = re.compile(r"^hub-check: (?P<name>[\w-]+): (?P<status>.+?) in (?P<s>[\d.]+) s, peak RSS (?P<gb>[\d.]+) GB$")


def parse_hub_output(text: str) -> list[dict]:
    """The per-command lines ``hub-check: NAME: STATUS in S s, peak RSS G GB`` as rows."""
    rows = []
    for line in ANSI.sub("", text).splitlines():
        m = _HUB_LINE.match(line.strip())
        if m:
            rows.append({"command": m["name"], "status": m["status"], "seconds": float(m["s"]), "rss_gb": float(m["gb"])})
    return rows


def run_hub(device: str, tiny: bool, timeout: float) -> StepResult:
    """Step 5: the hub-tier commands of :data:`HUB_COMMANDS` through ``hub-check`` on the device
    (the real-size random pipeline is built once, about 4 GB on disk, and reused)."""
    res = StepResult("hub", budget_s=timeout)
    cmd = [sys.executable, "-m", "course_lib", "hub-check", "--only", ",".join(HUB_COMMANDS),
           "--limit", f"{max(10.0, timeout - 45):.0f}"] + (["--tiny"] if tiny else [])
    res.command = "python -m course_lib hub-check " + " ".join(cmd[4:])
    t0 = time.perf_counter()
    rc, out, err, timed_out = _run(cmd, timeout, _step_env(device, tiny), config.REPO_ROOT)
    res.wall_s = time.perf_counter() - t0
    res.rows = parse_hub_output(out)
    bad = [r for r in res.rows if r["status"] != "ok"]
    if timed_out:
        res.status, res.reason = "FAILED", f"timed out after {timeout:.0f} s ({len(res.rows)} commands done)"
    elif rc != 0 or bad or len(res.rows) < len(HUB_COMMANDS):
        why = f"{bad[0]['command']}: {bad[0]['status']}" if bad else f"hub-check exited with code {rc}"
        res.status, res.reason = "FAILED", why
    else:
        res.status = "PASSED"
    if res.status == "FAILED":
        res.log_tail = "\n".join((out + err).strip().splitlines()[-15:])
    return res


def run_nbval(paths: list[Path], device: str, tiny: bool, timeout: float) -> StepResult:
    """Step 4: ``COURSE_MODE=fast COURSE_DEVICE=<device> python -m pytest <notebook>``, one notebook after
    the other, all within ``timeout`` seconds; cell counts and wall time per notebook.

    One pytest per notebook, so each row is its own (a notebook cut off by the budget still
    reports the cells that finished, and the ones before it are complete).
    """
    res = StepResult("nbval", budget_s=timeout)
    paths = [Path(p) for p in paths]
    shown = [os.path.relpath(p, config.REPO_ROOT) if str(p.resolve()).startswith(str(config.REPO_ROOT)) else str(p)
             for p in paths]
    res.command = f"COURSE_MODE=fast COURSE_DEVICE={device} python -m pytest -v " + " ".join(shown)
    if not paths:
        res.status, res.reason = "FAILED", f"no lesson notebooks {', '.join(NBVAL_GLOBS)} under {config.REPO_ROOT / 'solutions'}"
        return res
    missing = [p for p in paths if not p.is_file()]
    if missing:
        res.status, res.reason = "FAILED", f"notebook not found: {missing[0]}"
        return res
    env = _step_env(device, tiny)
    env["COURSE_MODE"] = "fast"
    ini = config.REPO_ROOT / "pyproject.toml"
    # the repository's nbval options (lax mode, sanitizers) also for notebooks outside it
    opts = ["-c", str(ini), "--rootdir", str(config.REPO_ROOT)] if ini.is_file() else []
    t0 = time.perf_counter()
    problems, tails = [], []
    for path, name in zip(paths, shown):
        left = timeout - (time.perf_counter() - t0)
        if left < 5:
            res.rows.append({"notebook": path.name, "passed": 0, "failed": 0, "errors": 0, "skipped": 0,
                             "seconds": None, "first_failure": "", "status": "not run", "summary": ""})
            problems.append(f"{path.name} not run (budget spent)")
            continue
        t1 = time.perf_counter()
        rc, out, err, timed_out = _run([sys.executable, "-m", "pytest", "-v", *opts, str(path)], left, env,
                                       config.REPO_ROOT)
        row = {"notebook": path.name, **parse_pytest(out), "seconds": time.perf_counter() - t1}
        bad = row["failed"] + row["errors"]
        if timed_out:
            row["status"] = "timed out"
            problems.append(f"{path.name} timed out after {left:.0f} s "
                            f"({bad + row['passed'] + row['skipped']} cells done, {bad} failed)")
        elif bad:
            row["status"] = "FAILED"
            problems.append(f"{path.name}: {bad} of {bad + row['passed'] + row['skipped']} cells failed")
        elif rc != 0:
            row["status"] = f"pytest exit {rc}"
            last = next((ln for ln in reversed(ANSI.sub("", out + err).strip().splitlines()) if ln.strip()), "no output")
            problems.append(_one_line(f"{path.name}: pytest exited with code {rc}: {last.strip('= ')}", 160))
        elif row["passed"] + row["skipped"] == 0:
            row["status"] = "no cells"
            problems.append(f"{path.name}: pytest ran no cells")
        else:
            row["status"] = "passed"
        if row["status"] != "passed":
            tails.append(f"--- {name}\n" + _tail(ANSI.sub("", out + ("\n" + err if err.strip() else "")), 12))
        res.rows.append(row)
    res.wall_s = time.perf_counter() - t0
    res.info = {"notebooks": len(paths)}
    if problems:
        res.status, res.reason = "FAILED", _one_line("; ".join(problems))
        res.log_tail = "\n".join(tails)
    else:
        res.status = "PASSED"
    return res


# =============================================================================================
# The report
# =============================================================================================

def environment(device: str, tiny: bool) -> dict[str, str]:
    """Device name and the versions the report's header shows."""
    import torch

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": version("triton"),
           "CUDA (torch build)": str(torch.version.cuda), "host": platform.node() or "?",
           "CPU": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["device"] = (f"{torch.cuda.get_device_name(0)} (cuda:0 of {torch.cuda.device_count()}, "
                         f"{props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor})")
        env["cuDNN"] = str(torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if smi.returncode == 0 and smi.stdout.strip():
                env["NVIDIA driver"] = smi.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        env["device"] = f"cpu (DRY RUN: Triton interpreter, TRITON_INTERPRET=1{', tiny sizes' if tiny else ''})"
    try:
        rev = subprocess.run(["git", "-C", str(config.REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(config.REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            env["commit"] = rev.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def _table(head: list[str], align: str, rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _step_tables(res: StepResult) -> list[str]:
    """The table of one step's rows."""
    if res.name == "kernels":
        lines = [f"Error: max |triton − reference| / (1 + |reference|) against float64 on the same rounded inputs "
                 f"and d out; tolerance per dtype {', '.join(f'{k} {v:.0e}' for k, v in BASE_TOL.items())} "
                 f"(+ {FP32_EXTRA['d guide']:.0e}·D for d guide, + {FP32_EXTRA['d grid']:.0e} for d grid).", ""]
        return lines + _table(["shape B×H×W×D×Hg×Wg", "dtype", "quantity", "max error", "tolerance", "ok", "note"],
                              "lllrrll", [[r["shape"], r["dtype"], r["quantity"], _f(r["err"], ".2e"), _f(r["tol"], ".1e"),
                                           {True: "yes", False: "**NO**"}.get(r["ok"], "skipped"), r.get("note", "")]
                                          for r in res.rows])
    if res.name == "bench":
        i = res.info
        lines = []
        if i:
            lines = [f"Copy bandwidth (floor) {_f(i.get('bandwidth_GBps'), '.0f')} GB/s from a {i.get('copy_MiB')} MiB "
                     f"copy on the device in the same run; grid {i.get('grid')} (D×Hg×Wg); median of "
                     f"{i.get('repeats')} calls after {i.get('warmup')} warm-up, timed with {i.get('timer')}. "
                     "floor = bytes the call must move / copy bandwidth; × faster than naive: the grid_sample "
                     "path of lesson 01 at the same size and dtype.", ""]
        return lines + _table(["size", "MP", "dtype", "impl", "pass", "ms (median)", "ms (min)", "floor ms",
                               "× off the floor", "GB/s", "× faster than naive"], "lrlllrrrrrr",
                              [[f"{r['size']} ({r['wxh']})", f"{r['mp']:.2f}", r["dtype"], r["impl"], r["pass"],
                                f"{r['ms']:.3f}", f"{r['min_ms']:.3f}", f"{r['floor_ms']:.3f}", f"{r['off_floor']:.1f}",
                                f"{r['GBps']:.0f}", _f(r["speedup"], ".1f")] for r in res.rows])
    if res.name == "student":
        i = res.info
        lines = []
        if i:
            lines = [f"Checkpoint {i.get('checkpoint')}, text encoder {i.get('text_encoder')}, photo {i.get('size')} "
                     f"on {i.get('device')}, slice {i.get('slice_impl')}; instruction “{i.get('instruction')}”; "
                     f"median of {i.get('repeats')} after {i.get('warmup')} warm-up (wall time, device synchronised).",
                     ""]
        return lines + _table(["stage", "runs", "ms (median)", "ms (min)", "note"], "lrrrl",
                              [[r["stage"], r["runs"], f"{r['ms']:.2f}", f"{r['min_ms']:.2f}", r["note"]]
                               for r in res.rows])
    if res.name == "nbval":
        lines = [f"Command (one pytest per notebook, all within the step's budget): `{res.command}`", ""]
        rows = [[r["notebook"], r["status"], r["passed"], r["failed"], r["errors"], r["skipped"],
                 _f(r["seconds"], ".1f"), r["first_failure"] or "-", r["summary"] or "-"] for r in res.rows]
        if res.rows:
            tot = {k: sum(r[k] for r in res.rows) for k in ("passed", "failed", "errors", "skipped")}
            secs = [r["seconds"] for r in res.rows if r["seconds"] is not None]
            rows.append(["**total**", "", tot["passed"], tot["failed"], tot["errors"], tot["skipped"],
                         _f(sum(secs) if secs else None, ".1f"), "", ""])
        return lines + _table(["notebook", "status", "cells passed", "failed", "errors", "skipped", "wall s",
                               "first failing cell", "pytest says"], "llrrrrrll", rows)
    if res.name == "hub":
        lines = [f"Command: `{res.command}` (every hub command on the CPU: `make hub-check`)", ""]
        return lines + _table(["command", "status", "seconds", "peak RSS GB"], "llrr",
                              [[r["command"], r["status"], f"{r['seconds']:.1f}", f"{r['rss_gb']:.2f}"]
                               for r in res.rows])
    return []


def render(results: list[StepResult], env: dict[str, str], started: str, total_s: float, argv: list[str],
           finished: bool = True) -> str:
    """The Markdown report of the steps so far (``finished=False``: an in-progress snapshot)."""
    failed = [r for r in results if r.status == "FAILED"]
    if not finished:
        overall = "IN PROGRESS"
    else:
        overall = "PASSED" if not failed else f"FAILED ({len(failed)} of {len(results)} steps)"
    dry = env.get("device", "").startswith("cpu")
    lines = [f"# GPU acceptance check: {started}", ""]
    if dry:
        lines += ["> **Dry run on the CPU** (Triton interpreter, tiny sizes): it tests this script, "
                  "not a GPU. Timings mean nothing.", ""]
    lines += _table(["", ""], "ll", [[k, v] for k, v in env.items()]
                    + [["command", "python -m course_lib gpu-check " + " ".join(argv)],
                       ["total wall time", f"{total_s:.1f} s (limit {TOTAL_BUDGET_S:.0f} s)"],
                       ["overall", f"**{overall}**"]])
    lines += ["", "## Summary", ""]
    lines += _table(["step", "status", "wall s", "budget s", "reason"], "llrrl",
                    [[f"{k + 1}. {r.name}", f"**{r.status}**", _f(r.wall_s if r.status != "SKIPPED" else None, ".1f"),
                      _f(r.budget_s or None, ".0f"), r.reason or "-"] for k, r in enumerate(results)])
    for k, r in enumerate(results):
        lines += ["", f"## {k + 1}. {STEPS[r.name]}", "",
                  f"Status: **{r.status}**" + (f": {r.reason}" if r.reason else "")
                  + (f"; wall {r.wall_s:.1f} s of a {r.budget_s:.0f} s budget" if r.status in ("PASSED", "FAILED") else ""),
                  ""]
        if r.rows or r.info:
            lines += _step_tables(r)
        elif r.status in ("PASSED", "FAILED"):
            lines += ["(no results)"]
        if r.log_tail:
            lines += ["", "<details><summary>last lines of its output</summary>", "", "```", r.log_tail, "```", "",
                      "</details>"]
    return "\n".join(lines) + "\n"


# =============================================================================================
# The command
# =============================================================================================

def _parse_budgets(items: list[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    budgets = dict(BUDGETS)
    for item in items:
        name, _, value = item.partition("=")
        if name not in STEPS or not value:
            parser.error(f"--budget wants STEP=SECONDS with STEP one of {', '.join(STEPS)}, not {item!r}")
        try:
            budgets[name] = float(value)
        except ValueError:
            parser.error(f"--budget {item!r}: {value!r} is not a number of seconds")
    return budgets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m course_lib gpu-check",
        description="GPU acceptance check, under 8 minutes: (1) the Triton slicing kernels against the PyTorch "
                    "reference in fp32/fp16/bf16, values and gradients; (2) the slicing benchmark at 1080p and 4K, "
                    "fp32 and fp16, against a memory-bandwidth floor measured in the same run; (3) the shipped "
                    "student end to end on a 1080p photo; (4) nbval of lessons 02-05 in FAST mode on CUDA. Writes "
                    "one Markdown report; a failing step is reported FAILED and the others still run; exit code 1 "
                    "if any step failed. Without a CUDA device it says so in one line and exits 0.")
    p.add_argument("--out", default=None,
                   help="report file (default outputs/gpu_check/report-<timestamp>.md); an existing file is never "
                        "overwritten")
    p.add_argument("--skip", action="append", default=[], metavar="STEP[,STEP]",
                   help=f"steps to skip, comma-separated or repeated: {', '.join(STEPS)} (e.g. --skip nbval)")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                   help="change a step's time budget (default " + ", ".join(f"{k}={v:.0f}" for k, v in BUDGETS.items())
                        + f"); the whole run still stops within {TOTAL_BUDGET_S:.0f} s")
    # testing without a GPU (see the module docstring)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nbval-paths", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["kernels", "bench", "student"], default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu runs the Triton interpreter: use it with --tiny")
    if args.worker:
        return worker(args.worker, args.device, args.tiny)
    skip = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        parser.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(STEPS)}")
    budgets = _parse_budgets(args.budget, parser)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA_LINE)
        return 0

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(args.out) if args.out else config.OUTPUT_DIR / "gpu_check" / f"report-{time.strftime('%Y%m%d-%H%M%S')}.md"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "x"):  # claim the name now: never overwrite, not even a report written meanwhile
            pass
    except FileExistsError:
        print(f"gpu-check: {out} already exists; refusing to overwrite it (choose another --out)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gpu-check: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    t_start = time.perf_counter()
    deadline = t_start + TOTAL_BUDGET_S - RESERVE_S
    try:
        env = environment(args.device, args.tiny)
    except Exception as exc:  # the report is still written, with what went wrong here
        env = {"device": args.device, "environment": _one_line(f"unavailable ({type(exc).__name__}: {exc})")}
    results = [StepResult(name, budget_s=budgets[name]) for name in STEPS]
    nb_paths = ([Path(p) for p in args.nbval_paths.split(",") if p.strip()] if args.nbval_paths is not None
                else None)

    def save(finished: bool) -> None:
        out.write_text(render(results, env, started, time.perf_counter() - t_start, argv, finished))

    print(f"gpu-check: {env['device']}; report {out}", flush=True)
    save(False)
    for k, name in enumerate(STEPS):
        res = results[k]
        if name in skip:
            res.status, res.reason, res.budget_s = "SKIPPED", "--skip", 0.0
        elif name == "nbval" and args.device == "cpu" and nb_paths is None:
            res.status, res.reason, res.budget_s = "SKIPPED", "CPU dry run: the lessons need CUDA (--nbval-paths to test)", 0.0
        elif name == "hub" and args.device == "cpu":
            res.status, res.reason, res.budget_s = "SKIPPED", "CPU dry run: on the CPU run make hub-check", 0.0
        else:
            timeout = min(budgets[name], deadline - time.perf_counter())
            if timeout < 5:
                res.status, res.reason = "FAILED", f"no time left in the {TOTAL_BUDGET_S:.0f} s total budget"
            else:
                print(f"gpu-check: [{k + 1}/{len(STEPS)}] {name} (budget {timeout:.0f} s) ...", flush=True)
                if name == "nbval":
                    res = run_nbval(nb_paths if nb_paths is not None else nbval_paths(), args.device, args.tiny, timeout)
                elif name == "hub":
                    res = run_hub(args.device, args.tiny, timeout)
                else:
                    res = run_worker_step(name, args.device, args.tiny, timeout)
                results[k] = res
        print(f"gpu-check: [{k + 1}/{len(STEPS)}] {name}: {res.status}"
              + (f" ({res.wall_s:.1f} s)" if res.status != "SKIPPED" else "")
              + (f": {res.reason}" if res.reason else ""), flush=True)
        save(False)
    save(True)
    failed = [r.name for r in results if r.status == "FAILED"]
    print(f"gpu-check: wrote {out} in {time.perf_counter() - t_start:.0f} s: "
          + (f"FAILED ({', '.join(failed)})" if failed else "all steps passed"
             + (f" ({', '.join(r.name for r in results if r.status == 'SKIPPED')} skipped)"
                if any(r.status == "SKIPPED" for r in results) else "")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
