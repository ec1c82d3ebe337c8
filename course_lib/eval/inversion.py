"""``python -m course_lib inversion-eval``: lesson 07's reconstruction and editing tables.

Reconstruction (∅ text) of held-out 32 px photos by DDIM-50, DDIM-4 and the cycle-trained 4-step
inverter (:mod:`course_lib.inversion`), scored by PSNR (dB), SSIM and LPIPS; editing of the same
photos under their *training-phrasing* instructions, scored like every other editing table
(:func:`course_lib.eval.score.score`: PSNR dB, ΔE00, instruction accuracy %, direction %, drift).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import config
from ..inversion import invert_and_edit, load_inverter, reconstruct
from ..perceptual import load_lpips
from ..student import load_student
from ..teacher import Teacher, add_teacher_options, load_teacher
from . import score as S, tables
from .heldout import SEED, heldout_batch
from .student import student_method

#: Columns of the two tables (and keys of their rows).
RECONSTRUCTION_COLUMNS = ("method", "steps", *S.RECONSTRUCTION_KEYS, "ms_per_image")
EDITING_COLUMNS = ("method", "steps", *S.EDIT_KEYS, "ms_per_image")


def evaluate_inversion(forward: Teacher, teacher: Teacher, n: int = 48, seed: int = SEED, perceptual=None,
                       student=None, edit_steps: int = 4, guidance: float = 1.0, tau: float = 0.8,
                       ref_steps: int = 50) -> dict:
    """Reconstruction and editing on held-out photos (lesson 07's table).

    Reconstruction (∅ text) of ``n`` held-out 32 px photos by DDIM-50, DDIM-4 and the cycle-trained
    4-step inverter: PSNR, SSIM, LPIPS (see ``perceptual.label``) and ms per image (one batch,
    this machine). Editing of the same photos under their *training-phrasing* instructions,
    scored with :func:`course_lib.eval.score.score`: Inverse-and-Edit with the trained inverter
    (4 + 4 steps), inversion editing with DDIM-50, the teacher's own 50-step edit, and (if given)
    the grid student.

    ``ref_steps`` (default 50) is the step count of the DDIM references (a smoke check lowers it).

    Returns:
        ``{"reconstruction": [row, ...], "editing": [row, ...], "perceptual": label}``; rows have the
        keys of :data:`RECONSTRUCTION_COLUMNS` and :data:`EDITING_COLUMNS`.
    """
    perceptual = perceptual or load_lpips()
    if isinstance(perceptual, torch.nn.Module):  # a plain loss function (tests) has no device
        perceptual = perceptual.to(teacher.device)
    batch = heldout_batch(n, teacher.resolution, seed=seed, paraphrases="train")
    x = batch["source"]
    same = {**batch, "target": x}  # reconstruction: the photo is its own target
    recon = []
    for name, model, steps in [(f"DDIM-{ref_steps}", teacher, ref_steps), (f"DDIM-{edit_steps}", teacher, edit_steps),
                               (f"cycle-trained {edit_steps}-step", forward, edit_steps)]:
        r = S.run(lambda s, i, t, model=model, steps=steps: reconstruct(model, teacher, s, steps)[0], same,
                  keys=S.RECONSTRUCTION_KEYS, perceptual=perceptual)
        recon.append({"method": name, "steps": f"{steps} + {steps}", **r["scores"], "ms_per_image": r["ms_per_image"]})
    methods: list[tuple[str, str, S.Method]] = [
        (name, f"{steps} + {steps}",
         lambda s, i, t, model=model, steps=steps: invert_and_edit(model, teacher, s, i, steps, guidance, tau))
        for name, model, steps in [(f"Inverse-and-Edit (cycle {edit_steps}-step)", forward, edit_steps),
                                   (f"DDIM-{ref_steps} inversion + edit", teacher, ref_steps)]]
    methods.append(("teacher's own edit (lesson 04)", str(ref_steps),
                    lambda s, i, t: teacher.edit(s, i, steps=ref_steps)))
    if student is not None:
        methods.append(("grid student (lesson 03)", "1", student_method(student)))
    edits = [{"method": "identity", "steps": "0", **S.score(x, batch), "ms_per_image": 0.0}]
    for name, steps, fn in methods:
        r = S.run(fn, batch)
        edits.append({"method": name, "steps": steps, **r["scores"], "ms_per_image": r["ms_per_image"]})
    return {"reconstruction": recon, "editing": edits, "perceptual": perceptual.label,
            "resolution": int(teacher.resolution)}


def tables_markdown(result: dict) -> str:
    """The two tables of :func:`evaluate_inversion` as markdown."""
    px = result.get("resolution", 32)
    recon = [("method", f"reconstruction (held-out photos, {px} px)") if c == "method" else
             ("lpips", f"{result['perceptual']} ↓") if c == "lpips" else c for c in RECONSTRUCTION_COLUMNS]
    edit = [("method", "editing (training phrasings)") if c == "method" else c for c in EDITING_COLUMNS]
    return (tables.markdown(result["reconstruction"], recon) + "\n\n"
            + tables.markdown(result["editing"], edit))


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib inversion-eval``: lesson 07's table (reconstruction and editing)."""
    p = argparse.ArgumentParser(prog="python -m course_lib inversion-eval",
                                description="Reconstruction (DDIM-50, DDIM-4, cycle-trained 4-step inverter) and "
                                            "inversion editing on held-out photos, as one markdown table.")
    p.add_argument("--n", type=int, default=config.pick(fast=8, full=48), help="held-out photos")
    p.add_argument("--inverter", default=None, help="inverter checkpoint (default: the shipped one)")
    p.add_argument("--no-student", action="store_true", help="leave the grid student out of the editing table")
    add_teacher_options(p)
    p.add_argument("--steps", type=int, default=4, help="inversion = generation steps of the inverter (default 4)")
    p.add_argument("--ref-steps", type=int, default=50, help="steps of the DDIM references (default 50)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    try:
        if a.out:
            tables.check_free([a.out], a.overwrite)
        teacher = load_teacher(a.teacher, a.teacher_path)
        forward, _ = load_inverter(a.inverter, teacher)
        student = None
        if not a.no_student:
            student = load_student(device="cpu").eval()
        md = tables_markdown(evaluate_inversion(forward, teacher, n=a.n, student=student, edit_steps=a.steps,
                                                ref_steps=a.ref_steps))
        print(md)
        if a.out:
            tables.write({Path(a.out): md + "\n"}, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, RuntimeError, KeyError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
