"""``python -m course_lib retouch``: edit photos with an instruction.

    python -m course_lib retouch IN [IN ...] --instruction "make it warmer" -o OUT_OR_DIR \\
        [--strength S] [--overwrite] [--checkpoint PATH]

* Any resolution, 4K included: the network sees a small copy, the predicted grid is
  sliced at full resolution, so the output has exactly the input's size.
* Orientation is kept: EXIF-rotated photos are read upright (``load_image``) and written
  upright (pixels rotated, no orientation tag).
* ``-o`` is a file when there is one input and ``-o`` has a file suffix (``out.jpg``)
  and is not an existing folder; otherwise it is a folder (created if needed) that
  receives each input's file name (formats we do not write, e.g. GIF, become PNG).
* Outputs are written atomically (``images.save_image``): no partial files, ever. An
  existing output is never replaced without ``--overwrite``.
* Errors: every bad input (missing, truncated, not an image, output exists) gets one line
  ``error: ...`` on stderr and the **other files are still processed**; the exit code is 1
  if any file failed, 2 for a bad command line or a missing checkpoint, 0 otherwise.
* Offline: uses the shipped checkpoint and the embedded MiniLM text encoder.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import config

WRITABLE = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}


def output_paths(inputs: list[Path], output: Path) -> list[Path]:
    """Where each input's result goes (see the module docstring)."""
    as_dir = len(inputs) > 1 or output.is_dir() or str(output).endswith(("/", "\\")) or not output.suffix
    if not as_dir:
        return [output]
    names = []
    for p in inputs:
        name = p.name if p.suffix.lower() in WRITABLE else p.stem + ".png"
        names.append(output / name)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib retouch",
                                description="Retouch photos with a text instruction using the student "
                                            "(shipped checkpoint by default; offline). Keeps size and orientation; "
                                            "writes atomically; never overwrites without --overwrite. Bad files are "
                                            "reported one line each and skipped (exit code 1).")
    p.add_argument("inputs", nargs="+", help="input photos (JPEG, PNG, TIFF, WebP, BMP, ...)")
    p.add_argument("--instruction", "-i", required=True, help='e.g. "make it warmer and lift the shadows"')
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input) or folder (several inputs, or a path ending in /)")
    p.add_argument("--strength", type=float, default=1.0, help="0 = unchanged, 1 = as predicted, >1 exaggerates")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped one)")
    a = p.parse_args(argv)
    if not (a.strength >= 0) or a.strength > 10:
        print(f"error: --strength must be between 0 and 10, got {a.strength}", file=sys.stderr)
        return 2
    if not a.instruction.strip():
        print("error: --instruction is empty", file=sys.stderr)
        return 2

    from .images import ImageError, load_image, save_image
    from .student import CheckpointError, load_student, retouch
    from .text import TextEncoderError

    inputs = [Path(x) for x in a.inputs]
    outputs = output_paths(inputs, Path(a.output))
    try:
        model = load_student(a.checkpoint, device=config.device())
        model.embed([a.instruction])  # load the text encoder once, up front
    except (CheckpointError, TextEncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for src, dst in config.progress(list(zip(inputs, outputs)), desc="retouch", unit="img",
                                    disable=len(inputs) < 2 or config.is_fast()):
        t0 = time.perf_counter()
        try:
            if dst.exists() and not a.overwrite:
                raise ImageError(f"{dst}: exists (use --overwrite to replace it)")
            if dst.exists() and dst.resolve() == src.resolve() and not a.overwrite:
                raise ImageError(f"{dst}: is the input itself")
            img = load_image(src)  # (3, H, W), upright
            out = retouch(model, img, a.instruction, a.strength)
            save_image(out, dst, overwrite=a.overwrite)
        except ImageError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory on a huge image
            failed += 1
            print(f"error: {src}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
            continue
        print(f"wrote {dst} ({img.shape[-1]}x{img.shape[-2]}, {time.perf_counter() - t0:.2f} s)")
    if failed:
        print(f"retouch: {failed} of {len(inputs)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
