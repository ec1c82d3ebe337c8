"""``python -m course_lib COMMAND ...`` - the course's command line.

Each command lives in its own module as ``main(argv) -> int`` with its own
``--help``; this file only dispatches, importing a command's module when used.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module:function, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("course_lib.apps.cli:doctor_main", "versions, device, mode and which hub weights are present (offline)"),
    "data": ("course_lib.apps.cli:data_main", "the embedded photos: prepare, manifest, world (the 2.0 collection), oracle (why the grid is needed)"),
    "notebooks": ("course_lib.apps.cli:notebooks_main", "generate student notebooks from solutions/ (--check: drift test)"),
    "train-teacher": ("course_lib.train.teacher:main", "train the embedded diffusion teacher (resumable, Accelerate)"),
    "teacher-eval": ("course_lib.eval.teacher:main", "teacher quality vs DDIM steps on the test photos, two wordings"),
    "train-student": ("course_lib.train.student:main", "train the text-conditioned grid predictor (supervised, resumable)"),
    "train-vsd": ("course_lib.train.vsd:main", "distil the teacher into the grid student with VSD (no paired targets)"),
    "vsd-study": ("course_lib.studies.vsd_study:main", "score VSD students of the from-scratch ablation next to the identity and the teacher"),
    "train-inverter": ("course_lib.train.inverter:main", "cycle-consistency training of the 4-step inverter (lesson 07)"),
    "inversion-eval": ("course_lib.eval.inversion:main", "inversion reconstruction and editing table (lesson 07)"),
    "train-align": ("course_lib.train.align:main", "train the embedded edit encoder for the prompt-alignment loss"),
    "reproduce": ("course_lib.apps.reproduce:main", "every shipped checkpoint from its recipe file (--list: the commands)"),
    "wording-study": ("course_lib.studies.wording:main", "train the student's text pathway alone in variants; score unseen wording"),
    "evaluate": ("course_lib.eval.student:main", "evaluate identity, global-affine oracle and the student on held-out data"),
    "video-study": ("course_lib.studies.video_study:main", "lesson 09's flicker vs lag of smoothed grids on a demo clip (teacher, same noise, student)"),
    "retouch": ("course_lib.apps.retouch:main", "edit photos with an instruction using the shipped student"),
    "bench": ("course_lib.eval.bench_retouch:bench_main", "bench slice: kernels vs the memory floor; bench retouch: every method's quality and speed; bench memory: 4K/8K peak memory by stage"),
    "studio": ("course_lib.apps.studio:main", "serve the retouching studio (widgets app) as a local web page with Voila"),
    "hub-check": ("course_lib.harness.hub_check:main", "every hub-tier command for one step at 512 px on a real-size random pipeline (offline)"),
    "gpu-check": ("course_lib.harness.gpu_check:main", "GPU acceptance: kernels, benchmark, student, lessons 02-05 -> one report"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items())
    return (f"usage: python -m course_lib COMMAND [options]\n\ncommands:\n{rows}\n\n"
            "Run 'python -m course_lib COMMAND --help' for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
