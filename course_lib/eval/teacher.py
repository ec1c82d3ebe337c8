"""Measuring the teacher: quality vs sampling steps, x̂0 trajectories, an interactive preview.

``python -m course_lib teacher-eval`` prints the quality-vs-steps table on the test photos (never
seen in training) with the training wording and held-out phrasings, by kind of edit, and saves the plot.

All numbers are computed at the teacher's working resolution (the ground truth is
the exact edit of the same downsized source), so they measure the teacher, not
the resizing. Scores: :func:`course_lib.eval.score.score` (PSNR dB, ΔE00, instruction
accuracy %, direction %, drift in 8-bit levels).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from .. import config, metrics
from ..teacher import (EMBEDDED_WEIGHTS, EmbeddedTeacher, Teacher, TeacherError, add_teacher_options,
                       checkpoint_info, load_teacher)
from ..viz import show_images
from ..world import RetouchWorld
from . import score as S, tables, world as W
from .heldout import heldout_batch

#: Columns of the quality-vs-steps table (and keys of its rows).
COLUMNS = ("method", "steps", *S.EDIT_KEYS, "ms_per_image")


def teacher_quality_vs_steps(teacher: Teacher, steps: Sequence[int] = (4, 10, 25, 50), n: int = 24,
                             guidance: tuple[float, float] | None = None, seed: int = 0,
                             batch: dict | None = None, chunk: int = 24,
                             others: dict[str, S.Method] | None = None,
                             wording: str = "heldout_phrasing") -> list[dict]:
    """Teacher edits on test photos in one wording, for several DDIM step counts.

    Args:
        teacher: any :class:`course_lib.teacher.Teacher`.
        steps: DDIM step counts to try.
        n: number of test items (ignored when ``batch`` is given).
        guidance: ``(s_img, s_txt)``; seed: seeds the initial noise.
        chunk: images per sampling call.
        others: extra one-pass methods to score, name -> method ``fn(sources (n, 3, r, r),
            instructions, targets)`` (:data:`course_lib.eval.score.Method`, e.g. a student); they get
            rows with ``steps = 1``.
        wording: ``"heldout_phrasing"`` (default), ``"train"`` or ``"heldout_synonym"``.

    Returns:
        One dict per row: ``method`` ("identity" first, then ``others``, then "teacher"), ``steps``,
        ``psnr``, ``de00``, ``accuracy``, ``direction``, ``drift``, ``ms_per_image`` (wall time / n).
    """
    batch = batch or heldout_batch(n, teacher.resolution, wording=wording)
    rows = [{"method": "identity", "steps": 0, **S.score(batch["source"], batch), "ms_per_image": 0.0}]
    for name, fn in (others or {}).items():
        warm_up(fn, batch)
        r = S.run(fn, batch)
        rows.append({"method": name, "steps": 1, **r["scores"], "ms_per_image": r["ms_per_image"]})
    for k in config.progress(list(steps), desc="steps"):
        def teacher_fn(src, texts, tgt, k=int(k)):
            return torch.cat([teacher.edit(src[i:i + chunk], texts[i:i + chunk], steps=k, guidance=guidance,
                                           seed=seed + i) for i in range(0, len(src), chunk)])
        warm_up(teacher_fn, batch)
        r = S.run(teacher_fn, batch)
        rows.append({"method": "teacher", "steps": int(k), **r["scores"], "ms_per_image": r["ms_per_image"]})
    return rows


def warm_up(fn: S.Method, batch: dict) -> None:
    """Call ``fn`` once on the first item, untimed, so ``ms_per_image`` does not carry one-time costs
    (loading the text encoder, first-call kernel set-up) - for a 32 px student those are larger than
    all its timed calls together."""
    with torch.no_grad():
        fn(batch["source"][:1], batch["instruction"][:1], batch["target"][:1])


def world_quality_vs_steps(teacher: Teacher, steps: Sequence[int] = (4, 10, 25, 50), n: int = 48,
                           wordings: Sequence[str] = ("train", "heldout_phrasing"), guidance=None, seed: int = 0,
                           others: dict[str, S.Method] | None = None, chunk: int = 48, size: int | None = None,
                           split: str = "test") -> list[dict]:
    """The teacher on the **test photos** (or ``split="val"``: the validation photos,
    where a checkpoint or its guidance is chosen), per wording and kind of edit.

    Items are :func:`course_lib.eval.world.world_batch` crops at the teacher's working size (or
    ``size``), the same items for every method; scores are the world's keys
    (:data:`course_lib.eval.world.KEYS`) split into the groups ``all``, ``global`` and
    ``content-aware``.

    Args:
        teacher: any :class:`Teacher`; steps: DDIM step counts; n: items per wording.
        wordings: any of :data:`course_lib.grammar.WORDINGS_KINDS`.
        others: extra one-pass methods (e.g. a student), scored as ``steps = 1`` rows.

    Returns:
        One dict per (wording, method, steps, group): ``wording``, ``method`` (``identity`` first),
        ``steps`` (0 identity, 1 one-pass), ``group``, ``n``, the scores and ``ms_per_image``.
    """
    size = size or teacher.resolution
    rows = []
    for w in wordings:
        batch = W.world_batch(n, size, w, W.SEED, split=split)
        fns: dict[tuple[str, int], S.Method] = {("identity", 0): lambda s, i, t: s}
        fns.update({(name, 1): fn for name, fn in (others or {}).items()})
        for k in steps:
            def teacher_fn(src, texts, tgt, k=int(k)):
                return torch.cat([teacher.edit(src[i:i + chunk], texts[i:i + chunk], steps=k, guidance=guidance,
                                               seed=seed + i).float().cpu() for i in range(0, len(src), chunk)])
            fns[("teacher", int(k))] = teacher_fn
        for (name, k), fn in config.progress(list(fns.items()), desc=f"teacher-eval {w}"):
            r = S.run(fn, batch, None, W.KEYS)
            for g, sc in W.group_scores(r["items"], batch["kind"]).items():
                rows.append({"wording": w, "method": name, "steps": k, "group": g, **sc,
                             "ms_per_image": r["ms_per_image"]})
    return rows


def world_table(rows: list[dict], key: str = "psnr") -> str:
    """Compact Markdown: one row per (method, steps), one column per (wording, group) of ``key``."""
    cols = [(w, g) for w in dict.fromkeys(r["wording"] for r in rows) for g in ("global", "content-aware")]
    val = {(r["method"], r["steps"], r["wording"], r["group"]): r for r in rows}
    out = ["| method | steps | " + " | ".join(f"{w.replace('_', ' ')}, {g}" for w, g in cols) + " | ms / image |",
           "|---|---:|" + "---:|" * len(cols) + "---:|"]
    for m, k in dict.fromkeys((r["method"], r["steps"]) for r in rows):
        cells = [val.get((m, k, w, g), {}).get(key, float("nan")) for w, g in cols]
        ms = val.get((m, k, cols[0][0], "all"), {}).get("ms_per_image", float("nan"))
        out.append(f"| {m} | {k} | " + " | ".join(tables.cell(c, "{:.2f}") for c in cells) + f" | {tables.cell(ms, '{:.0f}')} |")
    return "\n".join(out)


def format_table(rows: list[dict]) -> str:
    """A markdown table of :func:`teacher_quality_vs_steps` rows."""
    return tables.markdown(rows, COLUMNS)


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
    out = teacher.edit(source, instruction, steps=int(steps), guidance=(float(s_img), float(s_txt)), seed=seed)
    images, titles = [source, out], ["source", f"teacher, {int(steps)} steps, s_I={s_img:g}, s_T={s_txt:g}"]
    if target is not None:
        images.append(target)
        titles[1] += f"\nPSNR {float(metrics.psnr(out, target)):.1f} dB"
        titles.append(f"ground truth (identity {float(metrics.psnr(source, target)):.1f} dB)")
    fig = show_images(images, titles, ncols=len(images))
    return fig, out


def change_cosine(pred: torch.Tensor, source: torch.Tensor, target: torch.Tensor, min_rms: float = 1e-3) -> torch.Tensor:
    """How well a predicted edit points along the true one (lesson 04, exercise 4.5).

    Args:
        pred, source, target: (B, 3, h, w) images in [0, 1].
        min_rms: items whose true change ``target − source`` has a smaller RMS ask for no edit and
            have no direction: they are left out.

    Returns:
        () the mean over the edited items of cos(pred − source, target − source), each change flattened.
    """
    d_pred, d_true = (pred - source).flatten(1), (target - source).flatten(1)  # (B, 3hw)
    edited = d_true.pow(2).mean(1).sqrt() > min_rms  # (B,)
    # cos = <Δ̂, Δ> / (‖Δ̂‖ ‖Δ‖), averaged over the edited items
    return torch.nn.functional.cosine_similarity(d_pred[edited], d_true[edited], dim=1).mean()


@torch.no_grad()
def x0_probe(teacher: Teacher, n: int = 64, ts: Sequence[int] = (999, 800, 500, 200, 50), draws: int = 8,
             seed: int = 123) -> dict:
    """What an embedded teacher's one-call guess x̂0 knows, on ``n`` training crops.

    At t = 999 the noisy input is almost pure noise, so the best guess is E[x0 | source, text]: the
    regression a student would make. A teacher that reads *which* edit is asked predicts a change
    x̂0 − source that points along the true change x0 − source; one that does not shrinks it to
    nothing, or points it elsewhere. Measured: PSNR of x̂0 at each t with and without the text, and
    at t = 999 (the mean of ``draws`` noise draws) the cosine between predicted and true change (mean
    over the items that ask for a change) and both RMS sizes (in [0, 1] pixels).

    Returns:
        ``{"identity": dB, "t": {t: {"text": dB, "no_text": dB}}, "cosine": c, "rms_true": r, "rms_pred": r,
        "n": n}``.
    """
    ds = RetouchWorld("train", "train", size=teacher.resolution, length=n, seed=seed)
    items = [ds[i] for i in range(n)]
    src = torch.stack([i["source"] for i in items]).to(teacher.device)  # (n, 3, r, r) in [0, 1]
    tgt = torch.stack([i["target"] for i in items]).to(teacher.device)
    text = teacher.encode_text([i["instruction"] for i in items])
    null = teacher.null_text(n).to(text)
    s_in, x0 = teacher.to_space(src), teacher.to_space(tgt)
    g = torch.Generator().manual_seed(seed)

    def guess(x_t, t, txt):  # x̂0 in [0, 1]
        tt = torch.full((n,), t, device=teacher.device, dtype=torch.long)
        return teacher.from_space(teacher.predict_x0(torch.cat([x_t, s_in], 1), tt, txt))

    def db(a):  # mean PSNR over items, each capped at 100 dB (an item with no edit, guessed exactly)
        return float((-10 * torch.log10(((a - tgt) ** 2).mean((1, 2, 3)).clamp_min(1e-10))).mean())

    out = {"identity": db(src), "t": {}, "n": n}
    for t in ts:
        ab = teacher.alpha_bar(torch.tensor([t])).to(x0)
        # x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g).to(x0)
        out["t"][int(t)] = {"text": db(guess(x_t, t, text)), "no_text": db(guess(x_t, t, null))}
    mean = torch.stack([guess(torch.randn(x0.shape, generator=g).to(x0), 999, text) for _ in range(draws)]).mean(0)
    d_true, d_pred = (tgt - src).flatten(1), (mean - src).flatten(1)
    out["cosine"] = float(change_cosine(mean, src, tgt))
    out["rms_true"], out["rms_pred"] = float(d_true.pow(2).mean().sqrt()), float(d_pred.pow(2).mean().sqrt())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib teacher-eval",
                                description="Teacher quality vs DDIM steps on the test photos, with the training "
                                            "wording and held-out phrasings, split by kind of edit.")
    p.add_argument("--steps", default="4,10,25,50", help="comma-separated DDIM step counts (default %(default)s)")
    p.add_argument("--n", type=int, default=config.pick(fast=8, full=48), help="test items per wording")
    p.add_argument("--guidance", default=None, help="s_img,s_txt (default: the checkpoint's)")
    add_teacher_options(p)
    p.add_argument("--out", default=str(config.OUTPUT_DIR / "teacher_quality_vs_steps.png"), help="the plot (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plot")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows (and the command) as JSON here")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="the test photos (default) or the validation photos (to choose a checkpoint or its "
                        "guidance without looking at the test photos)")
    p.add_argument("--probe", action="store_true",
                   help="also probe the one-call guess x̂0 on training crops (x0_probe: PSNR by timestep with and "
                        "without the text, the change's cosine at t = 999)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        tables.check_free([a.out] + ([a.json] if a.json else []), a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        teacher = load_teacher(a.teacher, a.teacher_path)
    except TeacherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    g = tuple(float(x) for x in a.guidance.split(",")) if a.guidance else None
    return _main_world(a, teacher, g)


def _command(a: argparse.Namespace, skip: tuple[str, ...] = ()) -> str:
    """The command line that reproduces a run (output paths and the options in ``skip`` left out)."""
    return tables.command_line("teacher-eval", a, skip=("out", "overwrite", "json", "weights", *skip))


def _training_record(a: argparse.Namespace, teacher: Teacher) -> dict | None:
    """How an embedded teacher was trained (its checkpoint's ``train`` record, losses dropped, and its
    text path), so a results file says which network it scored."""
    if not isinstance(teacher, EmbeddedTeacher):
        return None
    path = a.teacher_path or EMBEDDED_WEIGHTS
    info = checkpoint_info(path)
    train = {k: v for k, v in (info.get("train") or {}).items() if k != "losses"}
    return {"file": Path(path).name, **train, "reader": info["config"].get("reader") is not None,
            "film": info["config"]["unet"].get("resnet_time_scale_shift") == "scale_shift",
            "parameters": sum(p.numel() for p in teacher.unet.parameters())
            + (sum(p.numel() for p in teacher.reader.parameters()) if teacher.reader is not None else 0)}


def _main_world(a: argparse.Namespace, teacher: Teacher, g) -> int:
    """``teacher-eval``: :func:`world_quality_vs_steps`, printed, plotted and (``--json``) written."""
    probe = x0_probe(teacher) if a.probe else None
    if probe:
        print(f"x̂0 probe on {probe['n']} training crops: identity {probe['identity']:.2f} dB; " + ", ".join(
            f"t={t} {v['text']:.2f} (no text {v['no_text']:.2f})" for t, v in probe["t"].items())
              + f"; t=999 change cosine {probe['cosine']:.2f}, RMS {probe['rms_pred']:.3f} vs {probe['rms_true']:.3f}")
    rows = world_quality_vs_steps(teacher, [int(s) for s in a.steps.split(",")], n=a.n, guidance=g, split=a.split)
    print(f"guidance {g or teacher.default_guidance}, {a.n} {a.split}-photo items per wording at {teacher.resolution}px "
          f"(PSNR dB)")
    print(world_table(rows))
    plot_rows = [r for r in rows if r["wording"] == "train" and r["group"] == "all"]
    fig = plot_quality_vs_steps(plot_rows)
    command = _command(a)
    files = {a.out: lambda tmp: fig.savefig(tmp, dpi=100, format=Path(a.out).suffix.lstrip(".") or "png")}
    if a.json:
        files[a.json] = tables.json_text({"rows": rows, "n": a.n, "resolution": teacher.resolution,
                                          "guidance": list(g or teacher.default_guidance), "probe": probe,
                                          "split": a.split, "teacher_train": _training_record(a, teacher),
                                          "command": command}, indent=1) + "\n"
    try:
        tables.write(files, overwrite=a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(files)}")
    return 0
