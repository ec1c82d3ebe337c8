"""``python -m course_lib retouch``: edit photos with an instruction.

    python -m course_lib retouch IN [IN ...] --instruction "make it warmer" -o OUT_OR_DIR \\
        [--strength S] [--smoothing A] [--overwrite] [--checkpoint PATH]

* ``IN`` is a photo, or a *clip*: a folder of frames, an animated GIF, or a video file
  (MP4, MOV, MKV, WebM, ... read and written through the ffmpeg binary that the
  ``imageio-ffmpeg`` package ships, part of the set-up). Clips are retouched frame by frame
  with temporally smoothed grids (:mod:`course_lib.video`: an exponential moving average of
  the predicted grids, ``--smoothing A`` in [0, 1), 0 = per-frame) and written as a video
  (an ``-o`` ending in ``.mp4``, ``.mov``, ``.mkv``: H.264), an animated GIF (``.gif``) or a
  folder of PNG frames; a folder of frames keeps its file names. In a folder ``-o``, a
  clip's result is named after it: ``frames/`` -> ``OUT/frames/``, ``anim.gif`` ->
  ``OUT/anim.gif``, ``clip.mp4`` -> ``OUT/clip.mp4`` (``clip.webm`` -> ``OUT/clip.mp4``).

* Any resolution, 4K included: the network sees a small copy, the predicted grid is
  sliced at full resolution, so the output has exactly the input's size.
* Orientation is kept: EXIF-rotated photos are read upright (``load_image``) and written
  upright (pixels rotated, no orientation tag).
* ``-o`` is a file when there is one input and ``-o`` has a file suffix (``out.jpg``)
  and is not an existing folder; otherwise it is a folder (created if needed) that
  receives each input's file name (formats we do not write, e.g. a still GIF, become PNG).
* Outputs are written atomically (``images.save_image``): no partial files, ever. An
  existing output is never replaced without ``--overwrite``.
* Errors: every bad input (missing, truncated, not an image, output exists) gets one line
  ``error: ...`` on stderr and the **other files are still processed**; the exit code is 1
  if any file failed, 2 for a bad command line or a missing checkpoint, 0 otherwise.
* Understood as: a student with "understood as" heads (the shipped one) first prints what it
  read, e.g. ``understood: sky warmer (+1.0), shadows brighter (+0.5)``, and close readings it
  could also mean ("or did you mean ..."). When no edit reaches the threshold but one comes close
  (:func:`course_lib.student.interpret`) it applies that one and says it was not sure; when it
  recognises no edit ("xxxx", "make it better") it writes nothing, prints one ``error:`` line
  naming the closest edits it knows for those words (or a few instructions it understands), and
  exits with code 2.
* Offline: uses the shipped checkpoint and the embedded MiniLM text encoder.
* Speed: a photo is decoded to 8 bits, edited in one pass from the 8-bit photo to the 8-bit
  result (:func:`course_lib.student.retouch_fused`) and encoded; each file's line reports the three
  times. Decoding and encoding (JPEG, PNG) usually take longer than the edit itself.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import config
from ..images import ImageError, load_image_u8, save_array
from ..student import CheckpointError, interpret, load_student, retouch_fused, understood_line
from ..text import TextEncoderError
from ..video import retouch_stream
from . import clips
from .clips import VIDEO_SUFFIXES, VIDEO_WRITABLE, is_clip

#: Instructions named when one is not understood (a student with "understood as" heads refuses those).
EXAMPLES = ("make the sky warmer", "brighten the shadows a little", "add clarity", "make it cooler")
#: An alternative reading at least this likely is named after what was understood ("or did you mean ...").
CLOSE_P = 0.1


def refusal_message(instruction: str, alternatives: list[dict]) -> str:
    """The one ``error:`` line for an instruction that names no edit the student knows: the closest
    edits it does know for these words (:func:`course_lib.student.interpret`'s alternatives, where
    any is at least a little likely), else a few instructions it understands."""
    close = [x["instruction"] for x in alternatives if x["p"] >= 0.01]
    if close:
        return (f"error: no edit recognised in {instruction!r}; the closest edits I know: "
                + ", ".join(f'"{x}"' for x in close))
    return f"error: no edit recognised in {instruction!r}; try e.g. " + ", ".join(f'"{x}"' for x in EXAMPLES)


WRITABLE = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}


def output_paths(inputs: list[Path], output: Path) -> list[Path]:
    """Where each input's result goes (see the module docstring)."""
    as_dir = len(inputs) > 1 or output.is_dir() or str(output).endswith(("/", "\\")) or not output.suffix
    if not as_dir:
        return [output]
    names = []
    for p in inputs:
        names.append(output / output_name(p))
    return names


def output_name(p: Path) -> str:
    """The name an input's result gets inside an output folder (see the module docstring)."""
    if p.is_dir():
        return p.resolve().name or "frames"  # a folder of frames -> a folder of frames
    if p.suffix.lower() == ".gif" and is_clip(p):
        return p.name  # animated GIF -> animated GIF
    if p.suffix.lower() in VIDEO_SUFFIXES:
        # video -> the same kind of video when we encode it (mp4, mov, mkv), else an .mp4
        return p.name if p.suffix.lower() in VIDEO_WRITABLE else p.stem + ".mp4"
    return p.name if p.suffix.lower() in WRITABLE else p.stem + ".png"


def retouch_clip_file(model, src: Path, dst: Path, instruction: str, strength: float, smoothing: float,
                      overwrite: bool = False, fps: float | None = None) -> tuple[int, tuple[int, int]]:
    """Retouch one clip (folder of frames, GIF or video) into ``dst`` (``.mp4``/``.mov``/``.mkv``,
    ``.gif`` or a folder).

    Frames stream through :func:`course_lib.video.retouch_stream` (one in memory at a time for
    a folder output) and are written atomically by :func:`course_lib.apps.clips.write_frames`.

    Returns:
        ``(number of frames, (width, height))``.

    Raises:
        ImageError: (a :class:`course_lib.apps.clips.VideoError`) unreadable clip, output exists, ...
    """
    if dst.suffix.lower() in WRITABLE and not dst.is_dir():
        raise clips.VideoError(f"{dst}: a clip is written as a video ({', '.join(clips.VIDEO_WRITABLE)}), "
                               f"an animated .gif or a folder of frames, not {dst.suffix}")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise clips.VideoError(f"{dst}: exists (use --overwrite to replace it)")
    info = clips.clip_info(src)
    size: list[tuple[int, int]] = []

    def frames():
        for f in clips.iter_frames(src):
            if not size:
                size.append((int(f.shape[-1]), int(f.shape[-2])))
            yield f

    stream = retouch_stream(model, frames(), instruction, strength, smoothing)
    stream = config.progress(stream, total=info.n_frames, desc=src.name or "clip", unit="frame")
    names = clips.frame_names(info.n_frames or 0, clips.frame_files(src)) if info.kind == "frames" else None
    _, n = clips.write_frames(stream, dst, fps=fps or info.fps, overwrite=overwrite, names=names)
    return n, size[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib retouch",
                                description="Retouch photos (or clips: frame folders, GIFs, videos) with a text instruction "
                                            "using the student "
                                            "(shipped checkpoint by default; offline). Keeps size and orientation; "
                                            "writes atomically; never overwrites without --overwrite. Bad files are "
                                            "reported one line each and skipped (exit code 1).")
    p.add_argument("inputs", nargs="+", help="input photos (JPEG, PNG, TIFF, WebP, BMP, ...) or clips: a folder of "
                                              "frames, an animated GIF, a video (if an imageio plugin reads it)")
    p.add_argument("--instruction", "-i", required=True, help='e.g. "make it warmer and lift the shadows"')
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input; a clip: .mp4/.mov/.mkv or .gif) or folder (several inputs, or a path "
                        "ending in /; a clip written to a path without one of those suffixes becomes a folder of frames)")
    p.add_argument("--strength", type=float, default=1.0, help="0 = unchanged, 1 = as predicted, >1 exaggerates")
    p.add_argument("--smoothing", type=float, default=0.5,
                   help="clips only: exponential moving average of the grids over time, in [0, 1); "
                        "0 = every frame on its own, 0.5 (default) averages about 2 frames, 0.9 about 10")
    p.add_argument("--fps", type=float, default=None, help="clips written as GIF or video: frame rate (default: the input's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped one)")
    a = p.parse_args(argv)
    if not (a.strength >= 0) or a.strength > 10:
        print(f"error: --strength must be between 0 and 10, got {a.strength}", file=sys.stderr)
        return 2
    if not (0 <= a.smoothing < 1):
        print(f"error: --smoothing must be in [0, 1), got {a.smoothing}", file=sys.stderr)
        return 2
    if a.fps is not None and not (0 < a.fps <= 100):
        print(f"error: --fps must be in (0, 100], got {a.fps}", file=sys.stderr)
        return 2
    if not a.instruction.strip():
        print("error: --instruction is empty", file=sys.stderr)
        return 2

    inputs = [Path(x) for x in a.inputs]
    outputs = output_paths(inputs, Path(a.output))
    try:
        model = load_student(a.checkpoint, device=config.device())
        model.embed([a.instruction])  # load the text encoder once, up front
    except (CheckpointError, TextEncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    apply_text = a.instruction
    if model.cfg.readout:
        seen = interpret(model, a.instruction)
        if not seen["readings"]:
            print(refusal_message(a.instruction, seen["alternatives"]), file=sys.stderr)
            return 2
        line = understood_line(seen["readings"])
        if seen["unsure"]:
            line += f' (not sure: applying "{seen["apply_text"]}")'
        if seen["alternatives"] and seen["alternatives"][0]["p"] >= CLOSE_P:
            line += "; or did you mean " + ", ".join(f'"{x["instruction"]}"' for x in seen["alternatives"]
                                                    if x["p"] >= CLOSE_P) + "?"
        print(line)
        apply_text = seen["apply_text"]
    text = model.embed([apply_text])  # (1, features), once for all photos
    failed = 0
    for src, dst in config.progress(list(zip(inputs, outputs)), desc="retouch", unit="img",
                                    disable=len(inputs) < 2 or config.is_fast()):
        t0 = time.perf_counter()
        try:
            if dst.exists() and not a.overwrite:
                raise ImageError(f"{dst}: exists (use --overwrite to replace it)")
            if dst.exists() and dst.resolve() == src.resolve() and not a.overwrite:
                raise ImageError(f"{dst}: is the input itself")
            if is_clip(src):
                n, (w, h) = retouch_clip_file(model, src, dst, a.instruction, a.strength, a.smoothing,
                                              overwrite=a.overwrite, fps=a.fps)
                print(f"wrote {dst} ({n} frames, {w}x{h}, smoothing {a.smoothing:g}, "
                      f"{time.perf_counter() - t0:.2f} s)")
                continue
            t_dec = time.perf_counter()
            photo = load_image_u8(src)  # (H, W, 3) uint8, upright, as decoded
            t_edit = time.perf_counter()
            out = retouch_fused(model, photo.permute(2, 0, 1)[None], text, a.strength)  # (1, 3, H, W) view of (H, W, 3)
            t_enc = time.perf_counter()
            save_array(out[0].permute(1, 2, 0), dst, overwrite=a.overwrite)
            t_end = time.perf_counter()
        except ImageError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory on a huge image
            failed += 1
            print(f"error: {src}: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
            continue
        print(f"wrote {dst} ({photo.shape[1]}x{photo.shape[0]}, {t_end - t0:.2f} s: decode {1e3 * (t_edit - t_dec):.0f} ms, "
              f"edit {1e3 * (t_enc - t_edit):.0f} ms, encode {1e3 * (t_end - t_enc):.0f} ms)")
    if failed:
        print(f"retouch: {failed} of {len(inputs)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
