"""``python -m course_lib vsd-study``: the VSD-from-scratch recipe ablation of lesson 05.

Every student named on the command line is scored on the same items - the **test photos** (or the
validation photos) x the **training wording** by default (new photos, known wording) - next to the
identity and the teacher's own 50-step edit (its 32 px change transferred onto the photo, as in
``bench retouch``). For each student the table also gives what its checkpoint says of its
training: steps, recipe (from the provenance written by ``train-vsd``) and whether it saw paired
targets, and the curve of its monitor (MSE to a held-back truth / the identity's, from the log
stored in the checkpoint) for the training-curve figure.

Scores: the world's keys (:data:`course_lib.eval.world.KEYS`), one row per method and group of
edits (global, content-aware, all).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .. import config
from ..student import load_student, read_metadata
from ..teacher import TeacherError, add_teacher_options, load_teacher
from ..eval import score as S, tables, world as W
from ..eval.bench_retouch import COLUMNS as BENCH_COLUMNS, at_teacher_size, transfer_edit, world_wording
from ..eval.heldout import SEED
from ..eval.student import student_method

#: One row per method and group of edits (global, content-aware, all), the world's scores.
COLUMNS = ("method", "group", "steps", "paired_targets", *W.KEYS)


def checkpoint_record(path: str | Path) -> dict:
    """What a student checkpoint says of its training: ``steps``, ``paired_targets``, ``provenance``,
    and the monitor curve ``[(step, mse_gt / mse_id), ...]`` (empty for a supervised student)."""
    meta = read_metadata(path)
    log = json.loads(meta.get("log", "[]") or "[]")
    curve = [(r["step"], r["mse_gt"] / r["mse_id"]) for r in log if r.get("mse_id")]
    return {"steps": int(meta.get("trained_steps", 0) or 0), "paired_targets": meta.get("paired_targets", "yes"),
            "provenance": json.loads(meta.get("provenance", "{}") or "{}"), "curve": curve}


def study(students: dict[str, str], teacher, n: int = 48, size: int = 64, paraphrases: str = "train",
          teacher_steps: int = 50, seed: int = SEED, split: str = "test") -> dict:
    """Score the identity, the teacher and every student on the same ``n`` items of the ``split``
    photos (test or val) in the training wording (``paraphrases="train"``) or held-out phrasings,
    scored with the world's keys, one row per method and group (``global``, ``content-aware``, ``all``).

    Args:
        students: display name -> checkpoint path.
        teacher: the teacher the students were distilled from.

    Returns:
        ``{"rows": [...], "records": {name: checkpoint_record}, "n", "size", "paraphrases", "split"}``.
    """
    batch = W.world_batch(n, size, world_wording(paraphrases), seed, split=split)
    fns = {("identity", 0, "-"): lambda s, i, t: s,
           (f"teacher, {teacher_steps} DDIM steps", "-", "yes"): _teacher_fn(teacher, teacher_steps)}
    records = {}
    for name, path in students.items():
        records[name] = rec = checkpoint_record(path)
        model = load_student(path, device="cpu").eval()
        fns[(name, rec["steps"], rec["paired_targets"])] = student_method(model)
    rows = []
    for (name, steps, paired), fn in config.progress(list(fns.items()), desc="vsd-study"):
        r = S.run(fn, batch, None, W.KEYS)
        for g, sc in W.group_scores(r["items"], batch["kind"]).items():
            rows.append({"method": name, "group": g, "steps": steps, "paired_targets": paired, **sc})
    return {"rows": rows, "records": records, "n": n, "size": size, "paraphrases": paraphrases, "split": split}


def _teacher_fn(teacher, teacher_steps: int) -> S.Method:
    """The teacher's ``teacher_steps``-step edit at its working size, its change transferred onto the photo."""
    def fn(s, i, t):
        small = at_teacher_size(teacher, s)
        out = torch.cat([teacher.edit(small[k:k + 24], i[k:k + 24], steps=teacher_steps, seed=k)
                         for k in range(0, len(i), 24)])
        return transfer_edit(s, small, out)
    return fn


def seed_summary(rows: list[dict], recipes: dict[str, list[str]], keys=S.EDIT_KEYS) -> list[dict]:
    """Mean and spread over seeds: one row per recipe, from the rows of its runs.

    Args:
        rows: :func:`study` rows (``method`` plus the scores).
        recipes: recipe name -> the ``method`` names of its runs (one per seed).

    Returns:
        One dict per recipe: ``method``, ``seeds`` (how many runs), and for each key ``key`` (the
        mean) and ``key_spread`` (half the range: max − min over 2; 0 for one run).
    """
    by = {r["method"]: r for r in rows}
    out = []
    for name, runs in recipes.items():
        missing = [m for m in runs if m not in by]
        if missing:
            raise KeyError(f"no row for {missing[0]!r}")
        row = {"method": name, "seeds": len(runs)}
        for k in keys:
            v = [float(by[m][k]) for m in runs]
            # mean over seeds; spread = (max − min) / 2
            row[k], row[f"{k}_spread"] = sum(v) / len(v), (max(v) - min(v)) / 2
        out.append(row)
    return out


def seed_table(summary: list[dict], keys=S.EDIT_KEYS) -> str:
    """Markdown of :func:`seed_summary`: ``mean ± half-range`` per score."""
    fmt = {"psnr": "{:.2f}", "de00": "{:.2f}", "accuracy": "{:.0f}", "direction": "{:.0f}", "drift": "{:.2f}"}
    head = {"psnr": "PSNR dB ↑", "de00": "ΔE00 ↓", "accuracy": "instr. acc. % ↑", "direction": "direction % ↑",
            "drift": "drift ↓"}
    lines = ["| recipe | seeds | " + " | ".join(head.get(k, k) for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for r in summary:
        cells = [f"{fmt.get(k, '{:.2f}').format(r[k])} ± {fmt.get(k, '{:.2f}').format(r[k + '_spread'])}" for k in keys]
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(result: dict, group: str = "all") -> dict:
    """The study's target read from a :func:`study` result: is the best student that saw no paired
    targets at least as good as the teacher's row and at least the identity + 3 dB (PSNR)?

    Args:
        result: a :func:`study` result (rows per group).
        group: which group's rows to read (``"all"``, ``"global"``, ``"content-aware"``).

    Returns:
        ``{"best": name, "student": row, "teacher": row, "identity": row, "meets": bool,
        "gain": student − identity (dB), "vs_teacher": student − teacher (dB)}``.

    Raises:
        KeyError: no identity, teacher or no-paired-targets student among the rows.
    """
    rows = [r for r in result["rows"] if r.get("group", "all") == group]
    by = {r["method"]: r for r in rows}
    teacher = next((r for m, r in by.items() if m.startswith("teacher")), None)
    scratch = {m: r for m, r in by.items() if result["records"].get(m, {}).get("paired_targets") == "none"}
    if "identity" not in by or teacher is None or not scratch:
        raise KeyError("the result needs an identity row, a teacher row and a student without paired targets")
    best = max(scratch, key=lambda m: scratch[m]["psnr"])
    b, ident = scratch[best], by["identity"]
    # the target: PSNR ≥ the teacher's and ≥ the identity's + 3 dB
    meets = b["psnr"] >= teacher["psnr"] and b["psnr"] >= ident["psnr"] + 3
    return {"best": best, "student": b, "teacher": teacher, "identity": ident, "meets": bool(meets),
            "gain": b["psnr"] - ident["psnr"], "vs_teacher": b["psnr"] - teacher["psnr"]}


#: :func:`by_group`'s columns: PSNR over all items and per group of edits, then the scores over all.
GROUP_COLUMNS = ("method", "steps", ("psnr", "PSNR all (dB) ↑"), *BENCH_COLUMNS[2:4], "edit_accuracy", "drift")


def by_group(result: dict) -> list[dict]:
    """A study's rows, one per method: PSNR over all items, the global and the
    content-aware ones, and the edit accuracy and drift over all (for :data:`GROUP_COLUMNS`).

    Args:
        result: a :func:`study` result (rows per method and group).

    Returns:
        One dict per method, in the result's order.
    """
    out: dict[str, dict] = {}
    for r in result["rows"]:
        row = out.setdefault(r["method"], {"method": r["method"], "steps": r["steps"]})
        if r["group"] == "all":
            row.update(psnr=r["psnr"], edit_accuracy=r["edit_accuracy"], drift=r["drift"])
        else:
            row["psnr_global" if r["group"] == "global" else "psnr_content"] = r["psnr"]
    return list(out.values())


def changes(result: dict, pairs: list[tuple[str, str, str]], group: str = "all") -> list[dict]:
    """What each change of an ablation did: for ``(change, before, after)`` method names, the PSNR of
    both rows of ``group`` and the difference.

    Returns:
        ``[{"change", "before", "after", "psnr_before", "psnr_after", "delta"}]`` (dB).

    Raises:
        KeyError: a named method is not in the result.
    """
    psnr = {r["method"]: r["psnr"] for r in result["rows"] if r.get("group", "all") == group}
    # Δ = PSNR(after) − PSNR(before)
    return [{"change": c, "before": a, "after": b, "psnr_before": psnr[a], "psnr_after": psnr[b],
             "delta": psnr[b] - psnr[a]} for c, a, b in pairs]


def plot_curves(result: dict):
    """The monitor of every VSD student against its step (1 = the identity). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, rec in result["records"].items():
        if rec["curve"]:
            steps, values = zip(*rec["curve"])
            k = max(1, len(values) // 40)  # a running mean over k steps
            smooth = torch.nn.functional.avg_pool1d(torch.tensor(values)[None, None], k, 1)[0, 0]
            ax.plot(steps[k - 1:], smooth, label=name)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="step", ylabel="monitor: MSE to truth / identity's", title="VSD from scratch: training curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib vsd-study",
                                description="Score VSD students (each recipe of the ablation) next to the identity "
                                            "and the 50-step teacher on the test (or validation) photos.")
    p.add_argument("--students", required=True, help="comma-separated NAME=CHECKPOINT pairs")
    p.add_argument("--n", type=int, default=config.pick(fast=8, full=48), help="items")
    p.add_argument("--size", type=int, default=64, help="image side (pixels)")
    p.add_argument("--paraphrases", choices=["train", "heldout"], default="train")
    p.add_argument("--split", choices=["test", "val"], default="test", help="which photos")
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    add_teacher_options(p)
    p.add_argument("--json", default=None, help="write the result (and the command) here")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        students = dict(item.split("=", 1) for item in a.students.split(","))
    except ValueError:
        print("error: --students takes NAME=CHECKPOINT pairs separated by commas", file=sys.stderr)
        return 2
    missing = [path for path in students.values() if not Path(path).is_file()]
    if missing:
        print(f"error: no checkpoint at {missing[0]}", file=sys.stderr)
        return 2
    try:
        tables.check_free([a.json] if a.json else [], a.overwrite)
        teacher = load_teacher(a.teacher, a.teacher_path)
    except (FileExistsError, TeacherError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = study(students, teacher, a.n, a.size, a.paraphrases, a.teacher_steps, split=a.split)
    result["teacher"] = a.teacher_path or a.teacher
    result["command"] = tables.command_line("vsd-study", a, skip=("json", "overwrite", "threads"))
    print(tables.markdown(result["rows"], COLUMNS, title=f"{a.split} photos x {a.paraphrases} phrasings, n = {a.n}, {a.size} px"))
    if a.json:
        tables.write({a.json: tables.json_text(result, indent=1) + "\n"}, overwrite=a.overwrite)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
