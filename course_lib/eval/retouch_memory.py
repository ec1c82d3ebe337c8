"""``python -m course_lib bench memory``: the student's retouch of large photos, stage by stage, with the
peak memory each stage adds; and what reading the network's input straight from the 8-bit photo changes
in the student's output on the test photos.

Memory. A photo of each size (4K, 8K: a test photo resized with Pillow on 8 bits, JPEG-encoded to a file)
goes through the ``retouch`` command's steps: decode to an (H, W, 3) uint8 array, the network's input
read from it (:func:`course_lib.fastslice.resize_fast`), the grid (the network), the pass over the pixels
(guide, slice, apply, clamp, rounding: :func:`course_lib.fastslice.retouch_pass`) and encoding. Each stage's
peak is the process's resident set (``/proc/self/status``: ``VmHWM`` after resetting it through
``/proc/self/clear_refs``) minus the resident set before the stage, in MB and in *float copies* (one
full-resolution float32 RGB image, 12 bytes a pixel). For contrast, the float path: the photo converted to
float32, and the student's float inference on it (its result is a second float copy).

Quality. On the test photos (the evaluation items of ``bench retouch``), the student's output by

* ``torch path``: the training path (``data.resize`` to the network's input, the guide module, ``grid_sample``
  slice and apply) on the float photo, clipped;
* ``float inference``: the float photo, network input by ``resize_fast``, the fused kernel, clipped;
* ``fused 8-bit``: the photo rounded to 8 bits, then photo to result in one pass (8-bit out);
* ``torch path, 8-bit``: the torch path on the same 8-bit photo, rounded to 8 bits as ``fused 8-bit`` is,

each scored by PSNR against the target; ``fused 8-bit`` minus ``torch path, 8-bit`` is what the fused
pipeline changes with the rounding set aside.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from .. import bench, config, metrics, world
from ..fastslice import load_cpu_extension, resize_fast, retouch_pass
from ..images import load_image_u8, save_array
from ..student import load_student, retouch_fused
from ..util.files import atomic_write_text
from . import world as W

INSTRUCTION = "make it warmer"


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_supported() -> bool:
    """Whether this system lets a process reset its peak resident set (Linux ``clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def _trim() -> None:
    """Hand memory freed earlier back to the system (glibc ``malloc_trim``), so that a stage reusing it
    counts it as added."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, seconds, peak MB)``: ``fn()``'s wall time (one call, cold) and the most resident memory
    it added over what the process held before (its result, if it is kept, included)."""
    gc.collect()
    _trim()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    res = fn()
    sec = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return res, sec, (peak - before) / 1024


def memory_rows(model, sizes: list[tuple[int, int]], folder: Path) -> list[dict]:
    """One row per (size, stage): ``size``, ``path`` (``8-bit`` or ``float32``), ``stage`` and its ``id`` (one
    word: decode, input, grid, pass, encode, retouch, to_float, float_student), ``ms``,
    ``peak_MB``, ``float_copies`` (peak over one full-resolution float32 RGB image)."""
    from PIL import Image

    first = world.load_photo(world.photo_names("test")[0])  # (3, h, w) float, stored size
    base = Image.fromarray((first.permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy())
    text = model.embed([INSTRUCTION])
    rows = []
    for W_, H in sizes:
        name = f"{W_}x{H}"
        img = base.resize((W_, H), Image.Resampling.BICUBIC)  # 8-bit all the way
        path = folder / f"photo_{name}.jpg"
        img.save(path, quality=95)
        del img
        copy_mb = H * W_ * 12 / 2**20
        stages: list[tuple[str, str, str, Callable[[dict], object]]] = [
            ("8-bit", "decode", "decode", lambda s: load_image_u8(path)),
            ("8-bit", "network input", "input", lambda s: resize_fast(s["decode"].permute(2, 0, 1)[None], (model.cfg.net_size,) * 2)),
            ("8-bit", "grid", "grid", lambda s: model.predict_grid(s["network input"], text)),
            ("8-bit", "pass", "pass", lambda s: retouch_pass(s["grid"], s["decode"].permute(2, 0, 1)[None], model.guide)),
            ("8-bit", "encode", "encode", lambda s: save_array(s["pass"][0].permute(1, 2, 0), folder / f"out_{name}.jpg",
                                                     overwrite=True)),
            ("8-bit", "retouch (decode to encode)", "retouch", lambda s: save_array(
                retouch_fused(model, load_image_u8(path).permute(2, 0, 1)[None], text)[0].permute(1, 2, 0),
                folder / f"out_{name}.jpg", overwrite=True)),
            ("float32", "photo to float", "to_float", lambda s: s["decode"].permute(2, 0, 1)[None].float().div_(255)),
            ("float32", "student (float in, float out)", "float_student", lambda s: model(s["photo to float"], text).clamp_(0, 1)),
        ]
        state: dict = {}
        with torch.no_grad():
            for path_kind, stage, key, fn in stages:
                res, sec, mb = measure(lambda: fn(state))
                state[stage] = res
                rows.append({"size": f"{W_}x{H}", "id": key, "mp": round(H * W_ / 1e6, 2), "path": path_kind, "stage": stage,
                             "ms": 1e3 * sec, "peak_MB": mb, "float_copies": mb / copy_mb})
        del state
        gc.collect()
    return rows


def quality(model, n: int, size: int) -> dict:
    """Mean PSNR (dB) against the target of the four paths in the module docstring, on ``n`` items of the
    test photos at ``size`` pixels, and how far ``fused 8-bit`` is from ``torch path, 8-bit`` (levels)."""
    batch = W.world_batch(n, size, "train")
    src, tgt = batch["source"].float(), batch["target"].float()
    text = model.embed(batch["instruction"])
    with torch.enable_grad():  # the training path: torch resize, guide module, grid_sample
        torch_path = model(src, text, impl="grid_sample").detach().clamp(0, 1)
        src8 = (src * 255 + 0.5).to(torch.uint8)
        torch8 = (model(src8.float() / 255, text, impl="grid_sample").detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    with torch.no_grad():
        float_inf = model(src, text).clamp(0, 1)
        fused8 = retouch_fused(model, src8, text)
    outs = {"torch path": torch_path, "float inference": float_inf, "fused 8-bit": fused8.float() / 255,
            "torch path, 8-bit": torch8.float() / 255}
    psnr = {k: float(metrics.psnr(v, tgt).mean()) for k, v in outs.items()}
    diff = (fused8.int() - torch8.int()).abs()
    return {"n": n, "size": size, "net_size": model.cfg.net_size, "instruction_wording": "train", "psnr": psnr,
            "fused_minus_torch_8bit_dB": psnr["fused 8-bit"] - psnr["torch path, 8-bit"],
            "fused_minus_torch_float_dB": psnr["fused 8-bit"] - psnr["torch path"],
            "float_inference_minus_torch_dB": psnr["float inference"] - psnr["torch path"],
            "fused_vs_torch_8bit_max_levels": int(diff.max()),
            "fused_vs_torch_8bit_share_differing": float((diff > 0).float().mean())}


def format_table(result: dict) -> str:
    lines = ["| size | path | stage | ms | peak MB | float copies |", "|---|---|---|---:|---:|---:|"]
    for r in result["memory"]:
        lines.append(f"| {r['size']} | {r['path']} | {r['stage']} | {r['ms']:.0f} | {r['peak_MB']:.0f} | "
                     f"{r['float_copies']:.2f} |")
    q = result.get("quality")
    if q:
        lines += ["", f"PSNR vs target, {q['n']} test items at {q['size']} px (network input {q['net_size']} px):", "",
                  "| path | PSNR dB |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in q["psnr"].items()]
        lines += ["", f"fused 8-bit minus torch path 8-bit: {q['fused_minus_torch_8bit_dB']:+.4f} dB (max "
                  f"{q['fused_vs_torch_8bit_max_levels']} level, {100 * q['fused_vs_torch_8bit_share_differing']:.2f} % "
                  "of values differ)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m course_lib bench memory",
        description="The student's retouch of 4K and 8K photos stage by stage with the peak memory each stage adds, "
                    "and the PSNR of the fused 8-bit pipeline against the float paths on the test photos.")
    parser.add_argument("--sizes", default=None, help="comma-separated photo sizes: 1080p, 4k, 8k or WxH (default 4k,8k; FAST mode 4k)")
    parser.add_argument("--n", type=int, default=None, help="test items for the PSNR comparison (default 96; FAST 8)")
    parser.add_argument("--size", type=int, default=None, help="their side in pixels (default 384; FAST 192)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--note", default=None, help="a note stored in the results (e.g. what else ran)")
    parser.add_argument("--json", default=None, help="write the result here (e.g. data/results/retouch_memory.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    try:
        sizes = [bench.parse_size(s) for s in (args.sizes or config.pick(fast="4k", full="4k,8k")).split(",")]
    except ValueError:
        parser.error("--sizes: comma-separated 1080p, 4k, 8k or WxH")
    if args.json and Path(args.json).exists() and not args.overwrite:
        print(f"error: {args.json} exists (use --overwrite to replace it)", file=sys.stderr)
        return 2
    if not peak_supported():
        print("error: this system cannot reset a process's peak memory (/proc/self/clear_refs)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_student(device="cpu").eval()
    load_cpu_extension()  # built or loaded before anything is timed
    with torch.no_grad():  # and the network's first call
        model.predict_grid(torch.rand(1, 3, model.cfg.net_size, model.cfg.net_size), model.embed([INSTRUCTION]))
    load_start = bench.machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        rows = memory_rows(model, sizes, Path(tmp))
    q = quality(model, args.n or config.pick(fast=8, full=96), args.size or config.pick(fast=192, full=384))
    result = {"command": "python -m course_lib bench memory " + shlex.join(a for a in argv if a != "--overwrite"),
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "load_start": load_start, "load_end": bench.machine_load(), "note": args.note,
              "memory": rows, "quality": q}
    print(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n", overwrite=True)
        print(f"bench memory: wrote {args.json}")
    return 0


