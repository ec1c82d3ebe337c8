"""``python -m course_lib inversion-eval``: lesson 07's reconstruction and editing tables.

Reconstruction (∅ text) of 32 px crops of the test photos by DDIM-50, DDIM-4 and the cycle-trained 4-step
inverter (:mod:`course_lib.inversion`), scored by PSNR (dB), SSIM and LPIPS; editing of the same
crops under training-wording instructions, scored like every other editing table
(:func:`course_lib.eval.score.score`: PSNR dB, ΔE00, instruction accuracy %, direction %, drift).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

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
                       ref_steps: int = 50, stages: dict[str, Teacher] | None = None,
                       curve_steps: Sequence[int] = (), residual_rows: bool = False) -> dict:
    """Reconstruction and editing on the test photos (lesson 07's table).

    Reconstruction (∅ text) of ``n`` 32 px crops of the test photos by DDIM-50, DDIM-4 and the cycle-trained
    4-step inverter: PSNR, SSIM, LPIPS (see ``perceptual.label``) and ms per image (one batch,
    this machine). Editing of the same crops under training-wording instructions,
    scored with :func:`course_lib.eval.score.score`: Inverse-and-Edit with the trained inverter
    (4 + 4 steps), inversion editing with DDIM-50, the teacher's own 50-step edit, and (if given)
    the grid student.

    ``ref_steps`` (default 50) is the step count of the DDIM references (a smoke check lowers it).
    The photos are the test photos, which neither the teacher nor the inverter trained on
    (:func:`course_lib.eval.heldout.heldout_batch`, training wording).

    ``stages``: more forward models (name -> model, e.g. each training stage's checkpoint) whose
    ``edit_steps`` round trip is scored like the cycle-trained row (``result["stages"]``);
    ``curve_steps``: step counts of plain DDIM round trips for the reconstruction-vs-steps curve
    (``result["steps_curve"]``). ``residual_rows``: also score both inversion editors with the
    round trip's error removed (:func:`course_lib.inversion.invert_and_edit`, ``residual=True``).

    Returns:
        ``{"reconstruction": [row, ...], "editing": [row, ...], "perceptual": label, ...}``; rows have
        the keys of :data:`RECONSTRUCTION_COLUMNS` and :data:`EDITING_COLUMNS`.
    """
    perceptual = perceptual or load_lpips()
    if isinstance(perceptual, torch.nn.Module):  # a plain loss function (tests) has no device
        perceptual = perceptual.to(teacher.device)
    batch = heldout_batch(n, teacher.resolution, seed=seed, wording="train")
    x = batch["source"]
    same = {**batch, "target": x}  # reconstruction: the photo is its own target

    def round_trip(model: Teacher, steps: int) -> dict:
        # invert with `model`, regenerate with the teacher, both in `steps` steps: scores and time
        r = S.run(lambda s, i, t: reconstruct(model, teacher, s, steps)[0], same, keys=S.RECONSTRUCTION_KEYS,
                  perceptual=perceptual)
        return {**r["scores"], "ms_per_image": r["ms_per_image"]}

    recon = [{"method": name, "steps": f"{steps} + {steps}", **round_trip(model, steps)}
             for name, model, steps in [(f"DDIM-{ref_steps}", teacher, ref_steps),
                                        (f"DDIM-{edit_steps}", teacher, edit_steps),
                                        (f"cycle-trained {edit_steps}-step", forward, edit_steps)]]
    stage_rows = [{"method": name, "steps": f"{edit_steps} + {edit_steps}", **round_trip(model, edit_steps)}
                  for name, model in (stages or {}).items()]
    curve = [{"steps": int(k), **round_trip(teacher, int(k))} for k in curve_steps]
    methods: list[tuple[str, str, S.Method]] = [
        (name, f"{steps} + {steps}",
         lambda s, i, t, model=model, steps=steps: invert_and_edit(model, teacher, s, i, steps, guidance, tau))
        for name, model, steps in [(f"Inverse-and-Edit (cycle {edit_steps}-step)", forward, edit_steps),
                                   (f"DDIM-{ref_steps} inversion + edit", teacher, ref_steps)]]
    if residual_rows:
        methods += [(f"{name}, reconstruction error removed", f"{steps} + {2 * steps}",
                     lambda s, i, t, model=model, steps=steps: invert_and_edit(model, teacher, s, i, steps, guidance, tau,
                                                                               residual=True))
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
            "resolution": int(teacher.resolution), "photos": "test", "n": n, "stages": stage_rows,
            "steps_curve": curve}


def targets(result: dict) -> dict[str, float]:
    """Issue 20's targets from :func:`evaluate_inversion`'s result: ``psnr_gap_db`` (DDIM-50 minus
    the cycle-trained 4-step reconstruction PSNR; target <= 1), ``speedup`` (DDIM-50 round trip
    time / 4-step; target >= 10), and for editing ``direction_gain`` (Inverse-and-Edit minus
    DDIM-50 inversion + edit, direction %; target >= 0) and ``drift_excess`` (Inverse-and-Edit
    minus DDIM-50, drift; target <= 0). With the residual rows (``--residual``) also
    ``direction_gain_residual`` and ``drift_excess_residual``: Inverse-and-Edit with the round
    trip's error removed against the plain DDIM-50 inversion + edit (the paper's baseline), and
    ``..._vs_residual``: against DDIM-50 given the same correction."""
    ref = result["reconstruction"][0]  # the DDIM reference (ref_steps + ref_steps)
    cyc = next(r for r in result["reconstruction"] if r["method"].startswith("cycle-trained"))
    ed = {r["method"]: r for r in result["editing"]}
    ie = next(r for k, r in ed.items() if k.startswith("Inverse-and-Edit"))
    dd = next(r for k, r in ed.items() if k.endswith("inversion + edit"))
    out = {"psnr_gap_db": ref["psnr"] - cyc["psnr"], "speedup": ref["ms_per_image"] / max(cyc["ms_per_image"], 1e-9),
           "direction_gain": ie["direction"] - dd["direction"], "drift_excess": ie["drift"] - dd["drift"]}
    ie_r = next((r for k, r in ed.items() if k.startswith("Inverse-and-Edit") and k.endswith("removed")), None)
    dd_r = next((r for k, r in ed.items() if "inversion + edit" in k and k.endswith("removed")), None)
    if ie_r is not None:
        out.update(direction_gain_residual=ie_r["direction"] - dd["direction"],
                   drift_excess_residual=ie_r["drift"] - dd["drift"])
        if dd_r is not None:
            out.update(direction_gain_vs_residual=ie_r["direction"] - dd_r["direction"],
                       drift_excess_vs_residual=ie_r["drift"] - dd_r["drift"])
    return out


def tables_markdown(result: dict) -> str:
    """The two tables of :func:`evaluate_inversion` as markdown."""
    px = result.get("resolution", 32)
    where = "test photos"
    recon = [("method", f"reconstruction ({where}, {px} px)") if c == "method" else
             ("lpips", f"{result['perceptual']} ↓") if c == "lpips" else c for c in RECONSTRUCTION_COLUMNS]
    edit = [("method", "editing (training phrasings)") if c == "method" else c for c in EDITING_COLUMNS]
    out = tables.markdown(result["reconstruction"], recon) + "\n\n" + tables.markdown(result["editing"], edit)
    if result.get("stages"):
        stage = [("method", f"inverter, by training stage ({where})") if c == "method" else
                 ("lpips", f"{result['perceptual']} ↓") if c == "lpips" else c for c in RECONSTRUCTION_COLUMNS]
        out += "\n\n" + tables.markdown(result["stages"], stage)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib inversion-eval``: lesson 07's table (reconstruction and editing)."""
    p = argparse.ArgumentParser(prog="python -m course_lib inversion-eval",
                                description="Reconstruction (DDIM-50, DDIM-4, cycle-trained 4-step inverter) and "
                                            "inversion editing on the test photos, as one markdown table.")
    p.add_argument("--n", type=int, default=config.pick(fast=8, full=48), help="test items")
    p.add_argument("--inverter", default=None, help="inverter checkpoint (default: the shipped one)")
    p.add_argument("--no-student", action="store_true", help="leave the grid student out of the editing table")
    add_teacher_options(p)
    p.add_argument("--steps", type=int, default=4, help="inversion = generation steps of the inverter (default 4)")
    p.add_argument("--ref-steps", type=int, default=50, help="steps of the DDIM references (default 50)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--stages", default=None,
                   help="more inverters scored like the shipped one: 'name=checkpoint,name=checkpoint' "
                        "(e.g. each training stage)")
    p.add_argument("--curve", default=None, help="comma-separated step counts of plain DDIM round trips (a curve)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                   help="also score both inversion editors with the round trip's error removed "
                        "(x + G(z; y) - G(z; empty text); the studio's mode; default on)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--json", default=None, help="also write the measured result (tables, command) as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    try:
        outs = [x for x in (a.out, a.json) if x]
        if outs:
            tables.check_free(outs, a.overwrite)
        teacher = load_teacher(a.teacher, a.teacher_path)
        forward, _ = load_inverter(a.inverter, teacher)
        student = None
        if not a.no_student:
            student = load_student(device="cpu").eval()
        stages = {}
        for item in (a.stages.split(",") if a.stages else []):
            name, _, path = item.partition("=")
            if not path:
                raise ValueError(f"--stages item {item!r} is not name=checkpoint")
            stages[name.strip()] = load_inverter(path.strip(), teacher)[0]
        curve = [int(v) for v in a.curve.split(",")] if a.curve else []
        result = evaluate_inversion(forward, teacher, n=a.n, student=student, edit_steps=a.steps,
                                    ref_steps=a.ref_steps, stages=stages, curve_steps=curve,
                                    residual_rows=a.residual)
        result["targets"] = targets(result)
        result["command"] = "python -m course_lib inversion-eval " + shlex.join(argv if argv is not None else sys.argv[1:])
        result["inverter"] = str(a.inverter or "shipped")
        md = tables_markdown(result)
        print(md)
        files = {}
        if a.out:
            files[Path(a.out)] = md + "\n"
        if a.json:
            files[Path(a.json)] = json.dumps(result, indent=1) + "\n"
        if files:
            tables.write(files, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, RuntimeError, KeyError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
