"""Measuring the teacher: quality vs sampling steps, x̂0 trajectories, an interactive preview.

``python -m course_lib teacher-eval`` prints the quality-vs-steps table on held-out
photos x held-out paraphrases (never seen in training) and saves the plot.

All numbers are computed at the teacher's working resolution (the ground truth is
the exact edit of the same downsized source), so they measure the teacher, not
the resizing.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Sequence

import torch

from . import config
from .teacher import Teacher


def heldout_batch(n: int, size: int, seed: int = 1234, paraphrases: str = "heldout") -> dict:
    """``n`` held-out-photo pairs at ``size`` pixels, with ``"heldout"`` (default) or ``"train"`` phrasings.

    Returns:
        dict with ``source``, ``target`` (n, 3, size, size) in [0, 1], ``instruction`` and
        ``edits`` (lists of n str).
    """
    from .data import RetouchPairs

    ds = RetouchPairs("heldout", paraphrases, size=size, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    return {"source": torch.stack([it["source"] for it in items]),
            "target": torch.stack([it["target"] for it in items]),
            "instruction": [it["instruction"] for it in items], "edits": [it["edits"] for it in items]}


def direction_accuracy(output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                       edits: Sequence[str]) -> float:
    """Percentage of instructed (image, family) pairs whose attribute moved the ground truth's way.

    Uses :func:`course_lib.metrics.attributes`; families whose ground-truth effect is below
    ``metrics.MIN_EFFECT`` are skipped. An unchanged image scores 0; a random change about 50.
    """
    from . import metrics
    from .data import decode_edits

    a_out, a_src, a_tgt = (metrics.attributes(x, source) for x in (output, source, target))
    hits, total = 0, 0
    for i, enc in enumerate(edits):
        for e in decode_edits(enc):
            d_gt = float(a_tgt[e.family][i] - a_src[e.family][i])
            if abs(d_gt) >= metrics.MIN_EFFECT:
                d_out = float(a_out[e.family][i] - a_src[e.family][i])
                hits += int(d_out * d_gt > 0)
                total += 1
    return 100.0 * hits / max(total, 1)


def score(output: torch.Tensor, batch: dict) -> dict[str, float]:
    """Mean PSNR (dB), ΔE00, instruction accuracy and direction (%), content drift (8-bit levels).

    Args:
        output: (n, 3, r, r) in [0, 1], aligned with ``batch`` (see :func:`heldout_batch`).
    """
    from . import metrics

    src, tgt = batch["source"], batch["target"]
    return {"psnr": float(metrics.psnr(output, tgt).mean()),
            "de00": float(metrics.mean_delta_e00(output, tgt).mean()),
            "accuracy": 100 * float(metrics.instruction_accuracy(output, src, tgt, batch["edits"]).float().mean()),
            "direction": direction_accuracy(output, src, tgt, batch["edits"]),
            "drift": float(metrics.content_drift(output, src).mean())}


def teacher_quality_vs_steps(teacher: Teacher, steps: Sequence[int] = (4, 10, 25, 50), n: int = 24,
                             guidance: tuple[float, float] | None = None, seed: int = 0,
                             batch: dict | None = None, chunk: int = 24,
                             others: dict[str, Callable[[torch.Tensor, list[str]], torch.Tensor]] | None = None,
                             paraphrases: str = "heldout") -> list[dict]:
    """Teacher edits on held-out photos x held-out paraphrases, for several DDIM step counts.

    Args:
        teacher: any :class:`course_lib.teacher.Teacher`.
        steps: DDIM step counts to try.
        n: number of held-out pairs (ignored when ``batch`` is given).
        guidance: ``(s_img, s_txt)``; seed: seeds the initial noise.
        chunk: images per sampling call.
        others: extra one-pass methods to score, name -> ``fn(sources (n, 3, r, r), instructions)``
            (e.g. a student); they get rows with ``steps = 1``.
        paraphrases: ``"heldout"`` phrasings (default) or the ``"train"`` ones (new photos only).

    Returns:
        One dict per row: ``method`` ("identity" first, then ``others``, then "teacher"), ``steps``,
        ``psnr``, ``de00``, ``accuracy``, ``direction``, ``drift``, ``ms_per_image`` (wall time / n).
    """
    batch = batch or heldout_batch(n, teacher.resolution, paraphrases=paraphrases)
    n = batch["source"].shape[0]
    rows = [{"method": "identity", "steps": 0, **score(batch["source"], batch), "ms_per_image": 0.0}]
    for name, fn in (others or {}).items():
        t0 = time.perf_counter()
        out = fn(batch["source"], batch["instruction"])
        ms = 1000 * (time.perf_counter() - t0) / n
        rows.append({"method": name, "steps": 1, **score(out, batch), "ms_per_image": ms})
    for k in config.progress(list(steps), desc="steps"):
        t0, outs = time.perf_counter(), []
        for i in range(0, n, chunk):
            outs.append(teacher.edit(batch["source"][i:i + chunk], batch["instruction"][i:i + chunk],
                                     steps=int(k), guidance=guidance, seed=seed + i))
        ms = 1000 * (time.perf_counter() - t0) / n
        rows.append({"method": "teacher", "steps": int(k), **score(torch.cat(outs), batch), "ms_per_image": ms})
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table of :func:`teacher_quality_vs_steps` rows."""
    lines = ["| method | steps | PSNR (dB) ↑ | ΔE00 ↓ | instruction acc. (%) ↑ | direction (%) ↑ | drift ↓ "
             "| ms / image |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['psnr']:.2f} | {r['de00']:.2f} | {r['accuracy']:.0f} "
                     f"| {r['direction']:.0f} | {r['drift']:.2f} | {r['ms_per_image']:.0f} |")
    return "\n".join(lines)


def plot_quality_vs_steps(rows: list[dict]):
    """PSNR and ms/image vs DDIM steps, identity as a dashed line. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    ident = next(r for r in rows if r["method"] == "identity")
    t = [r for r in rows if r["method"] == "teacher"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot([r["steps"] for r in t], [r["psnr"] for r in t], "o-", label="teacher (DDIM)")
    a.axhline(ident["psnr"], ls="--", c="gray", label="identity (no edit)")
    for k, r in enumerate(x for x in rows if x["method"] not in ("identity", "teacher")):
        a.axhline(r["psnr"], ls=":", c=f"C{k + 1}", label=f"{r['method']} (one pass)")
    a.set(xscale="log", xlabel="DDIM steps", ylabel="PSNR to ground truth (dB)", title="quality")
    a.legend()
    b.plot([r["steps"] for r in t], [r["ms_per_image"] for r in t], "o-", c="C3")
    b.set(xscale="log", yscale="log", xlabel="DDIM steps", ylabel="ms / image", title="cost")
    for ax in (a, b):
        ax.set_xticks([r["steps"] for r in t], [str(r["steps"]) for r in t])
        ax.minorticks_off()
    fig.tight_layout()
    return fig


@torch.no_grad()
def x0_trajectory(teacher: Teacher, source: torch.Tensor, instruction: str, steps: int = 10,
                  guidance: tuple[float, float] | None = None, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    """The teacher's running estimate x̂0 after each DDIM step of one edit.

    Args:
        source: (3, r, r) in [0, 1] at the teacher's working size.

    Returns:
        ``steps`` pairs ``(t, x̂0 image (3, r, r) in [0, 1])``.
    """
    traj: list[tuple[int, torch.Tensor]] = []
    teacher.edit(source, instruction, steps=steps, guidance=guidance, seed=seed,
                 callback=lambda i, t, x, x0: traj.append((t, teacher.from_space(x0)[0].float().cpu())))
    return traj


def edit_preview(teacher: Teacher, source: torch.Tensor, instruction: str, steps: int = 10, s_img: float = 1.5,
                 s_txt: float = 3.0, seed: int = 0, target: torch.Tensor | None = None):
    """The widget callback: edit ``source`` and show source / teacher / (ground truth).

    Args:
        source, target: (3, r, r) in [0, 1].

    Returns:
        (figure, edited image (3, r, r)).
    """
    from . import metrics
    from .viz import show_images

    out = teacher.edit(source, instruction, steps=int(steps), guidance=(float(s_img), float(s_txt)), seed=seed)
    images, titles = [source, out], ["source", f"teacher, {int(steps)} steps, s_I={s_img:g}, s_T={s_txt:g}"]
    if target is not None:
        images.append(target)
        titles[1] += f"\nPSNR {float(metrics.psnr(out, target)):.1f} dB"
        titles.append(f"ground truth (identity {float(metrics.psnr(source, target)):.1f} dB)")
    fig = show_images(images, titles, ncols=len(images))
    return fig, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib teacher-eval",
                                description="Teacher quality vs DDIM steps on held-out photos x held-out (or training) "
                                            "paraphrases.")
    p.add_argument("--steps", default="4,10,25,50", help="comma-separated DDIM step counts (default %(default)s)")
    p.add_argument("--n", type=int, default=config.pick(fast=8, full=48), help="held-out pairs")
    p.add_argument("--guidance", default=None, help="s_img,s_txt (default: the checkpoint's)")
    p.add_argument("--weights", default=None, help="embedded teacher checkpoint (default: shipped)")
    p.add_argument("--out", default=str(config.OUTPUT_DIR / "teacher_quality_vs_steps.png"))
    p.add_argument("--student", action="store_true", help="also score the shipped student, if there is one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paraphrases", choices=["heldout", "train"], default="heldout",
                   help="instruction phrasings: held out from training (default) or the training ones")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from .teacher import load_embedded_teacher

    teacher = load_embedded_teacher(a.weights)
    g = tuple(float(x) for x in a.guidance.split(",")) if a.guidance else None
    others = {}
    if a.student:
        from . import student as student_lib

        if student_lib.shipped_path().is_file():
            model = student_lib.load_student()
            others["student"] = lambda src, texts: student_lib.retouch(model, src, texts)
        else:
            print(f"no student checkpoint at {student_lib.shipped_path()}: student row skipped")
    rows = teacher_quality_vs_steps(teacher, [int(s) for s in a.steps.split(",")], n=a.n, guidance=g, others=others,
                                    paraphrases=a.paraphrases)
    print(f"guidance {g or teacher.default_guidance}, {a.n} held-out-photo pairs ({a.paraphrases} phrasings) "
          f"at {teacher.resolution}px")
    print(format_table(rows))
    fig = plot_quality_vs_steps(rows)
    config.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(f"plot: {a.out}")
    print(json.dumps(rows))
    return 0
