"""``python -m course_lib video-study``: lesson 09's flicker-against-lag table, measured once.

It runs what lesson 09 runs in FULL mode (:func:`course_lib.video.smoothing_study`): a pan-and-zoom
clip of a bundled photo (36 frames at 192 x 144 by default), the embedded teacher edits each frame
with 8 DDIM steps from fresh noise, its grids are smoothed with each factor (0, 0.3, ..., 0.95) and
scored - edit jump, grid flicker and lag, in 8-bit levels - then the same teacher with the same
noise for every frame, and the shipped student on the same clip. The lesson renders its table
from the JSON this writes (``--json``, with the command that made it); an existing file is only
replaced with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from .. import video, world
from ..student import load_student, shipped_path
from ..teacher import TeacherError, add_teacher_options, load_teacher
from ..util.checkpoint import CheckpointError
from ..eval import tables

#: the table's columns (values in 8-bit levels)
COLUMNS = ("method", ("a", "smoothing a"), ("edit_jump", "edit jump (levels)"),
           ("grid_flicker", "grid flicker (levels)"), ("lag", "lag (levels)"))
TEACHER, SAME_NOISE, STUDENT = "teacher, fresh noise", "teacher, same noise", "student"


def table_rows(result: dict) -> list[dict]:
    """The study as flat table rows: the fresh-noise teacher per factor, the same-noise teacher
    (no smoothing, no lag), the student per factor (if measured)."""
    rows = [{"method": TEACHER, **r, "a": f"{r['a']:g}"} for r in result["teacher"]]
    rows.append({"method": SAME_NOISE, "a": "0", **result["same_noise"], "lag": math.nan})
    rows += [{"method": STUDENT, **r, "a": f"{r['a']:g}"} for r in result.get("student", [])]
    return rows


def markdown(result: dict) -> str:
    """The table of a ``video-study`` result, titled with its setting."""
    title = (f"**Flicker against lag** ({result['frames']} frames at {result['width']} x {result['height']}, "
             f"'{result['instruction']}', {result['steps']} DDIM steps per frame)")
    return tables.markdown(table_rows(result), COLUMNS, title=title)


def _factors(text: str) -> list[float]:
    try:
        factors = [video.check_smoothing(float(a)) for a in text.split(",") if a.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not factors:
        raise argparse.ArgumentTypeError("give at least one factor")
    return factors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib video-study",
                                description="Lesson 09's flicker-vs-lag study: the embedded teacher edits every frame "
                                            "of a demo clip from fresh noise, its grids are smoothed over time with "
                                            "each factor (edit jump, grid flicker, lag in 8-bit levels); then the same "
                                            "noise for every frame, and the shipped student on the same clip. The "
                                            "defaults are lesson 09's FULL mode (about a minute on one CPU thread).")
    p.add_argument("--photo", default="china", choices=world.photo_names(), help="photo of the demo clip")
    p.add_argument("--frames", type=int, default=36, help="frames of the clip (at least 2)")
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--instruction", default="make it warmer")
    p.add_argument("--steps", type=int, default=8, help="DDIM steps per frame")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first frame (frame t: seed + t)")
    p.add_argument("--factors", default=",".join(f"{f:g}" for f in video.SMOOTHING_FACTORS),
                   help="comma-separated smoothing factors in [0, 1) (default %(default)s)")
    add_teacher_options(p)
    p.add_argument("--student", default=None, help="student checkpoint (default: the shipped one)")
    p.add_argument("--no-student", action="store_true", help="leave the student's rows out")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the result (and the command) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    a = p.parse_args(argv)
    try:
        factors = _factors(a.factors)
    except argparse.ArgumentTypeError as exc:
        p.error(f"argument --factors: {exc}")
    if a.frames < 2 or a.height < 1 or a.width < 1 or a.steps < 1:
        print("error: --frames must be at least 2, --height, --width and --steps at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    try:
        tables.check_free([a.json] if a.json else [], a.overwrite)
        teacher = load_teacher(a.teacher, a.teacher_path)
        student = None if a.no_student else load_student(a.student or shipped_path())
    except (FileExistsError, TeacherError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clip = video.make_demo_clip(a.photo, a.frames, (a.height, a.width))  # (T, 3, H, W)
    t0 = time.perf_counter()
    result = {"command": tables.command_line("video-study", a, skip=("overwrite", "threads")), "photo": a.photo, "frames": a.frames, "height": a.height, "width": a.width,
              "instruction": a.instruction, "steps": a.steps, "seed": a.seed,
              "teacher_model": a.teacher_path or a.teacher,
              "student_checkpoint": None if a.no_student else str(a.student or "shipped"),
              "threads": a.threads}
    result.update(video.smoothing_study(teacher, clip, a.instruction, factors, a.steps, a.seed, student))
    result["seconds"] = time.perf_counter() - t0
    print(markdown(result))
    print(f"{result['seconds']:.0f} s ({a.threads} thread(s))")
    if a.json:
        tables.write({a.json: tables.json_text(result, indent=1) + "\n"}, overwrite=a.overwrite)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
