"""``python -m course_lib bench slice``: slicing kernels against naive and the memory floor.

Times every slice-and-apply implementation available here -- the naive
``grid_sample`` path of lesson 01 and the fused kernels of lesson 02 -- forward
and forward+backward, at a few frame sizes; measures the machine's memory
bandwidth in the same run (a large tensor copy) and turns it into a *floor* per
call: the time just to move the bytes the call must move. Prints a table (ms,
speed-up over naive, "x off the floor"), saves it as JSON and Markdown, and plots
latency against megapixels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch

from . import config
from .bilateral import CurveGuide, slice_apply_grid_sample
from .util.files import atomic_write_text
from .fastslice import (_cpu_model, available_impls, frame_cost, load_cpu_extension, retouch_pass, slice_apply_cpu,
                        slice_apply_triton, timed)

#: Named frame sizes (width, height).
NAMED_SIZES = {"512": (512, 512), "1080p": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}
#: Planes of H x W values each pass must read + write: forward reads RGB + guide, writes RGB;
#: backward also reads RGB, guide, d out and writes d RGB, d guide.
PLANES = {"fwd": 3 + 1 + 3, "fwd+bwd": (3 + 1 + 3) + (3 + 1 + 3 + 3 + 1)}


def machine_load() -> dict:
    """What else the machine is doing, for a results file: ``uptime``'s line (load averages over 1, 5 and
    15 minutes) and the CPU count. Timings on a loaded machine are noisy; ratios to a floor measured in the
    same run much less so."""
    import shutil
    import subprocess

    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    line = None
    if shutil.which("uptime"):
        try:
            line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            line = None
    return {"uptime": line, "loadavg_1_5_15": load, "cpus": os.cpu_count()}


#: FLOPs per pixel each implementation executes in its forward pass (a multiply-add counts 2): the naive path
#: evaluates the 8-corner formula (:func:`course_lib.fastslice.frame_cost`, 8 x (2 + 24) + 21); the C++ kernel
#: the bilinear form, 3 multiply-adds per coefficient and the affine (about 110); the pass from photo to result
#: adds the curve guide by binary search over its knots (about 20).
FWD_FLOPS_PER_PIXEL = {"naive": 8 * (2 + 2 * 12) + 2 * 9 + 3, "cpu": 110, "fused 8-bit": 130}
#: FLOPs per pixel of the curve guide in the C++ pass, by vector path: AVX-512 the binary search (about 20);
#: AVX2 per channel 3 multiply-adds for x' and 16 ramps as max(x', s) plus a multiply-add, 3 (6 + 16 x 3);
#: the portable loop 16 ramps as a subtract, a max and a multiply-add, 3 (6 + 16 x 4).
GUIDE_FLOPS_PER_PIXEL = {"avx512": 20, "avx2": 3 * (6 + 16 * 3), "portable": 3 * (6 + 16 * 4)}


def matmul_flops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """FLOPs per second of an ``n x n`` float32 matrix product (close to the machine's arithmetic peak)."""
    a = torch.randn(n, n, device=device)
    return 2 * n**3 / timed(torch.mm, a, a, repeats=repeats, warmup=1)


def parse_size(text: str) -> tuple[int, int]:
    """``"1080p"``, ``"4k"``, ``"8k"``, ``"512"`` (square) or ``"WxH"`` -> (width, height)."""
    key = text.strip().lower()
    if key in NAMED_SIZES:
        return NAMED_SIZES[key]
    if "x" in key:
        w, h = key.split("x")
        return int(w), int(h)
    return int(key), int(key)


def implementations(device: torch.device) -> dict[str, Callable]:
    """Name -> slice-apply function for tensors on ``device``; ``naive`` is lesson 01's grid_sample."""
    impls: dict[str, Callable] = {"naive": slice_apply_grid_sample}
    fused = available_impls()
    if device.type == "cuda" and "triton" in fused:
        impls["triton"] = slice_apply_triton
    if device.type == "cpu" and "cpu" in fused:
        impls["cpu"] = slice_apply_cpu
    return impls


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 5, inner: int = 1) -> float:
    """Bytes per second of a large ``dst.copy_(src)`` (read + write counted), median of ``repeats``
    measurements of ``inner`` copies each (several per measurement hide a GPU's launch and sync
    time; ``nbytes`` larger than its L2 cache)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)

    def copies():
        for _ in range(inner):
            dst.copy_(src)

    seconds = timed(copies, repeats=repeats, warmup=2) / inner
    return 2 * nbytes / seconds


def copy_floor_ms(nbytes: float, repeats: int = 5) -> float:
    """The floor of a call that moves ``nbytes`` (read + written): the median ms of copying
    ``nbytes / 2`` bytes into a preallocated, already-touched buffer (a fresh buffer would add page
    faults, which are a cost to remove, not part of the floor)."""
    n = max(1, int(nbytes // 2))
    src = torch.ones(n, dtype=torch.uint8)
    dst = torch.zeros_like(src)  # touched
    return 1e3 * timed(dst.copy_, src, repeats=repeats, warmup=2)


def fused_rows(W: int, H: int, grid_shape: tuple[int, int, int], repeats: int, gen: torch.Generator) -> list[dict]:
    """The pass from photo to result at one size (CPU): the fused 8-bit pipeline (an interleaved
    (H, W, 3) photo in and out, the curve guide, slice, apply, clamp, rounding) and the float forward
    into a reused buffer, on one thread and on all threads, against the copy floor of the same bytes
    measured right before each row."""
    D, Hg, Wg = grid_shape
    grid = torch.eye(3, 4).reshape(1, 12, 1, 1, 1).expand(1, 12, D, Hg, Wg) + 0.1 * torch.randn(1, 12, D, Hg, Wg,
                                                                                                  generator=gen)
    photo = torch.randint(0, 256, (1, H, W, 3), dtype=torch.uint8, generator=gen).permute(0, 3, 1, 2)
    out8 = torch.empty(1, H, W, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    image = torch.rand(1, 3, H, W, generator=gen)
    gmap = torch.rand(1, H, W, generator=gen)
    outf = torch.empty_like(image)
    guide = CurveGuide()
    calls = {"fused 8-bit photo->photo": (lambda: retouch_pass(grid, photo, guide, out=out8), 6 * H * W),
             "cpu fwd into buffer": (lambda: slice_apply_cpu(grid, gmap, image, out=outf), 28 * H * W)}
    rows = []
    threads = torch.get_num_threads()
    for n_threads in dict.fromkeys([1, os.cpu_count() or 1]):
        torch.set_num_threads(n_threads)
        try:
            with torch.no_grad():
                for name, (call, nbytes) in calls.items():
                    floor_ms = copy_floor_ms(nbytes, repeats)
                    ms = 1e3 * timed(call, repeats=repeats, warmup=1)
                    flops = H * W * (FWD_FLOPS_PER_PIXEL["cpu"] + GUIDE_FLOPS_PER_PIXEL.get(_simd_path() or "", 20)
                                     if "8-bit" in name else FWD_FLOPS_PER_PIXEL["cpu"])
                    rows.append({"size": f"{W}x{H}", "mp": round(H * W / 1e6, 3), "impl": f"{name}, {n_threads} thr",
                                 "pass": "fwd", "ms": ms, "floor_ms": floor_ms, "bytes": nbytes, "flops": flops,
                                 "speedup": None,
                                 "off_floor": ms / floor_ms, "GBps": nbytes / ms / 1e6, "threads": n_threads})
        finally:
            torch.set_num_threads(threads)
    return rows


def random_inputs(B: int, H: int, W: int, grid_shape: tuple[int, int, int], device: torch.device,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    D, Hg, Wg = grid_shape
    grid = torch.randn(B, 12, D, Hg, Wg, generator=gen).to(device)
    guide = torch.rand(B, H, W, generator=gen).to(device)  # uniform guide: no locality to exploit
    image = torch.rand(B, 3, H, W, generator=gen).to(device)
    return grid, guide, image


def pass_call(fn, ps: str, grid: torch.Tensor, guide: torch.Tensor, image: torch.Tensor,
              dout: torch.Tensor) -> Callable[[], None]:
    """A no-argument call that runs one benchmark pass of ``fn(grid, guide, image)``.

    ``ps`` is ``"fwd"`` (no autograd) or ``"fwd+bwd"`` (the forward and the gradients of all three
    inputs for the output gradient ``dout``).
    """
    if ps == "fwd":
        def call() -> None:
            with torch.no_grad():
                fn(grid, guide, image)
        return call
    g, gd, im = (t.detach().requires_grad_(True) for t in (grid, guide, image))

    def call_bwd() -> None:
        torch.autograd.grad(fn(g, gd, im), (g, gd, im), dout)
    return call_bwd


def run(sizes: list[tuple[int, int]], repeats: int, grid_shape: tuple[int, int, int] = (8, 16, 16),
        device: torch.device | None = None, impls: list[str] | None = None, backward: bool = True,
        naive_max_mp: float = 1e9, fused: bool = True) -> dict:
    """Time every implementation at every size; return the rows and the machine's floor.

    Args:
        sizes: (width, height) frames, batch 1.
        repeats: timed calls per measurement (median), after one warm-up call.
        grid_shape: (D, Hg, Wg).
        device: where the tensors live (default: ``config.device()``).
        impls: restrict to these names (default: all available).
        backward: also time forward+backward.
        naive_max_mp: skip the naive path above this many megapixels (it is slow).
        fused: on the CPU, also time the pass from photo to result (:func:`fused_rows`).

    Returns:
        ``{"bandwidth_GBps", "matmul_GFLOPs", "threads", "device", "rows": [...]}``, each row with
        ``size, mp, impl, pass, ms, floor_ms, bytes, flops`` (forward rows: executed FLOPs, see
        :data:`FWD_FLOPS_PER_PIXEL`), ``speedup, off_floor``.
    """
    device = device or config.device()
    fns = implementations(device)
    if impls:
        fns = {k: v for k, v in fns.items() if k in impls}
    bandwidth = copy_bandwidth(device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    passes = ["fwd", "fwd+bwd"] if backward else ["fwd"]
    for (W, H) in sizes:
        grid, guide, image = random_inputs(1, H, W, grid_shape, device, gen)
        dout = torch.randn(image.shape, generator=gen).to(device)
        cost = frame_cost(H, W, torch.float32, *grid_shape)
        mp = H * W / 1e6
        naive_ms: dict[str, float] = {}
        for name, fn in fns.items():
            if name == "naive" and mp > naive_max_mp:
                continue
            for ps in passes:
                ms = 1e3 * timed(pass_call(fn, ps, grid, guide, image, dout), repeats=repeats, warmup=1)
                # floor: the bytes the call must move at the copy bandwidth
                nbytes = PLANES[ps] * H * W * 4 + cost["grid_bytes"] * (1 if ps == "fwd" else 3)
                floor_ms = 1e3 * nbytes / bandwidth
                if name == "naive":
                    naive_ms[ps] = ms
                flops = H * W * FWD_FLOPS_PER_PIXEL.get(name, FWD_FLOPS_PER_PIXEL["cpu"]) if ps == "fwd" else None
                rows.append({"size": f"{W}x{H}", "mp": round(mp, 3), "impl": name, "pass": ps, "ms": ms,
                             "floor_ms": floor_ms, "bytes": nbytes, "flops": flops,
                             "speedup": naive_ms[ps] / ms if ps in naive_ms else None,
                             "off_floor": ms / floor_ms})
        if device.type == "cpu" and "cpu" in fns and fused:
            rows += fused_rows(W, H, grid_shape, repeats, gen)
    return {"device": str(device), "threads": torch.get_num_threads(), "bandwidth_GBps": bandwidth / 1e9,
            "matmul_GFLOPs": matmul_flops(device) / 1e9,
            "grid": list(grid_shape), "repeats": repeats, "cpu": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(), "simd": _simd_path(), "rows": rows}


def _simd_path() -> str | None:
    """The C++ pass's vector path on this CPU (``avx512``, ``avx2`` or ``portable``), if the kernel loads."""
    ext = load_cpu_extension()
    return None if ext is None or not hasattr(ext, "simd_path") else ext.simd_path()


def format_table(result: dict) -> str:
    """A Markdown table of :func:`run`'s rows, with the measured bandwidth on top."""
    lines = [f"device {result['device']}, {result['threads']} threads, copy bandwidth "
             f"{result['bandwidth_GBps']:.1f} GB/s, grid {'x'.join(map(str, result['grid']))} (DxHgxWg), "
             f"median of {result['repeats']}",
             "",
             "| size | MP | impl | pass | ms | x faster than naive | floor ms | x off the floor | GB/s |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}"
        lines.append(f"| {r['size']} | {r['mp']:.2f} | {r['impl']} | {r['pass']} | {r['ms']:.2f} | {speed} | "
                     f"{r['floor_ms']:.2f} | {r['off_floor']:.1f} | {r['bytes'] / r['ms'] / 1e6:.1f} |")
    load = (result.get("load_start") or {}).get("uptime")
    if load:
        lines[1:1] = ["", f"machine load at the start: {load}"]
    return "\n".join(lines)


def plot(result: dict, path: Path | None = None):
    """Latency against megapixels (log-log), one line per implementation and pass, floor dashed.

    Returns:
        The matplotlib figure (also saved to ``path`` when given).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = result["rows"]
    for ps, style in (("fwd", "-o"), ("fwd+bwd", "--s")):
        for impl in dict.fromkeys(r["impl"] for r in rows if r.get("threads") is None):
            pts = sorted((r["mp"], r["ms"]) for r in rows if r["impl"] == impl and r["pass"] == ps
                         and r.get("threads") is None)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{impl} {ps}")
        floor = sorted({(r["mp"], r["floor_ms"]) for r in rows if r["pass"] == ps and r.get("threads") is None})
        if floor:
            ax.plot(*zip(*floor), ":", color="gray", label=f"memory floor {ps}")
    fused = [r for r in rows if r.get("threads") is not None]
    for impl in dict.fromkeys(r["impl"] for r in fused):
        pts = sorted((r["mp"], r["ms"]) for r in fused if r["impl"] == impl)
        ax.plot(*zip(*pts), "-^", label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("megapixels")
    ax.set_ylabel("ms per call (median)")
    ax.set_title(f"slice + apply on {result['device']} ({result['threads']} threads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    # 'bench retouch' (lesson 08's results table) is course_lib.eval.bench_retouch; python -m course_lib
    # sends it there (course_lib.eval.bench_retouch.bench_main) and only 'bench slice' here.
    parser = argparse.ArgumentParser(
        prog="python -m course_lib bench",
        description="Benchmark slice-and-apply: naive grid_sample vs the fused kernels, forward and "
                    "forward+backward, against a memory-bandwidth floor measured in the same run.")
    parser.add_argument("what", choices=["slice", "retouch", "memory"],
                        help="slice: the kernels (lesson 02); retouch: every method's quality and speed (lesson 08; "
                             "'bench retouch --help' for its options); memory: the student's 4K and 8K retouch, "
                             "each stage's peak memory, and the 8-bit pipeline's PSNR ('bench memory --help')")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated frames: 512, 1080p, 4k or WxH "
                             "(default: 512,1080p,4k; FAST mode: 256,512,1080p)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement, median "
                        "(default 5; FAST mode 2)")
    parser.add_argument("--grid", default="8x16x16", help="grid D x Hg x Wg (default 8x16x16)")
    parser.add_argument("--impls", default=None, help="comma-separated subset of naive,cpu,triton")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: automatic)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument("--out", default=None, help=f"output folder (default {config.OUTPUT_DIR})")
    parser.add_argument("--json", default=None,
                        help="also write the result here (e.g. data/results/bench_slice.json, which lesson 02 renders)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--note", default=None, help="a note stored in the results (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.what != "slice":
        parser.error(f"run 'python -m course_lib bench {args.what}' (course_lib.eval)")

    sizes = [parse_size(s) for s in (args.sizes or config.pick(fast="256,512,1080p", full="512,1080p,4k")).split(",")]
    repeats = args.repeats or config.pick(fast=2, full=5)
    grid_shape = tuple(int(v) for v in args.grid.lower().split("x"))
    if len(grid_shape) != 3:
        parser.error("--grid must be D x Hg x Wg, e.g. 8x16x16")
    device = config.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else config.OUTPUT_DIR
    targets = [out / f"bench_slice.{ext}" for ext in ("json", "md", "png")] + ([Path(args.json)] if args.json else [])
    clash = [str(t) for t in targets if t.exists() and not args.overwrite]
    if clash:  # checked before the (long) run: nothing is lost
        print(f"error: {clash[0]} exists (use --overwrite to replace it)", file=sys.stderr)
        return 2
    load_start = machine_load()
    result = run(sizes, repeats, grid_shape, device, args.impls.split(",") if args.impls else None,
                 backward=not args.no_backward)
    result.update(load_start=load_start, load_end=machine_load(), note=args.note)
    result["command"] = "python -m course_lib bench slice " + shlex.join(
        a for a in argv if a not in ("slice", "--overwrite"))
    table = format_table(result)
    print(table)
    text = json.dumps(result, indent=1) + "\n"
    atomic_write_text(out / "bench_slice.json", text, overwrite=True)
    atomic_write_text(out / "bench_slice.md", table + "\n", overwrite=True)
    if args.json:
        atomic_write_text(args.json, text, overwrite=True)
    import matplotlib.pyplot as plt

    plt.close(plot(result, out / "bench_slice.png"))
    print(f"bench: wrote {out / 'bench_slice.md'}, .json and .png")
    return 0
