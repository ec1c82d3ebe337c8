"""The lessons' key figures, drawn from the results files and committed as images.

A lesson shows its key findings as a picture a reader sees without running anything
(``![...](../data/figures/NAME.png)`` in a Markdown cell). Each figure here is a function
that reads ``data/results/`` and returns a Matplotlib figure; ``python -m course_lib notebooks``
redraws every one and writes the PNG when its bytes changed, as it does the course map.
``tests/test_figures.py`` checks that each is drawn, committed and shown by a lesson.

Add a figure: write ``def name() -> Figure`` reading results files with :func:`results`, and
register it in :data:`FIGURES` under the file name the lesson links.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

from ..config import REPO_ROOT

FIGURES_DIR = REPO_ROOT / "data" / "figures"
RESULTS_DIR = REPO_ROOT / "data" / "results"


def results(name: str) -> dict:
    """A results file of ``data/results/``, parsed."""
    return json.loads((RESULTS_DIR / name).read_text(encoding="utf-8"))


#: file name under data/figures/ -> function drawing it from the results files
FIGURES: dict[str, Callable[[], object]] = {}


def figure(name: str):
    """Register ``fn`` as the drawing of ``data/figures/<name>``."""
    def deco(fn):
        FIGURES[name] = fn
        return fn
    return deco


def png_bytes(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes without a timestamp or software tag (so unchanged data gives unchanged bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def same_picture(old: bytes, new: bytes, max_level: int = 2) -> bool:
    """Whether two PNGs show the same picture: equal bytes, or equal sizes with no channel of any pixel
    more than ``max_level`` levels apart. The same plot drawn on another CPU differs in a few anti-aliased
    edge pixels by one level (measured: 7 pixels); rewriting the file for that is noise in a diff, while a
    changed number or mark moves its pixels by far more."""
    if old == new:
        return True
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(x)).convert("RGBA")).astype(np.int16) for x in (old, new))
    return a.shape == b.shape and int(np.abs(a - b).max()) <= max_level


def write_figures(names=None, out_dir: Path = FIGURES_DIR) -> list[str]:
    """Draw the registered figures (all, or ``names``) and write those whose picture changed
    (:func:`same_picture`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in names or sorted(FIGURES):
        fig = FIGURES[name]()
        new = png_bytes(fig)
        plt.close(fig)
        path = Path(out_dir) / name
        if path.is_file() and same_picture(path.read_bytes(), new):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(new)
        written.append(str(path))
    return written


@figure("vsd_alignment.png")
def vsd_alignment():
    """Lesson 06: PSNR and edit accuracy of VSD with and without the alignment loss, one point per seed.

    Each recipe gets a column per wording (training, held-out phrasings); a dot is one run (seed), the
    bar the mean over seeds, so the seeds' spread is read next to the difference between recipes.
    """
    import matplotlib.pyplot as plt

    recipes = (("VSD", "tab:blue"), ("VSD + alignment", "tab:orange"))
    wordings = (("train", "training wording"), ("heldout", "held-out phrasings"))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric, label in ((axes[0], "psnr", "PSNR to the teacher's edit (dB)"),
                              (axes[1], "edit_accuracy", "edit accuracy (%)")):
        for k, (wording, wlabel) in enumerate(wordings):
            rows = [r for r in results(f"vsd_align_{wording}.json")["rows"] if r["group"] == "all"]
            for j, (recipe, colour) in enumerate(recipes):
                v = [r[metric] for r in rows if r["method"].startswith(recipe + " (seed")]
                x = 3 * k + j
                ax.hlines(sum(v) / len(v), x - 0.3, x + 0.3, colors=colour, lw=2,
                          label=recipe if k == 0 else None)
                ax.plot([x] * len(v), v, "o", color=colour, ms=5, alpha=0.8)
            ref = [r[metric] for r in rows if r["method"].startswith("teacher")]
            ax.hlines(ref, 3 * k - 0.5, 3 * k + 1.5, colors="grey", linestyles=":",
                      label="teacher, 50 steps" if k == 0 else None)
        ax.set_xticks([0.5, 3.5], [w for _, w in wordings], fontsize=8)
        ax.set_xlim(-0.8, 4.8)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


# lesson 03
@figure("student_world.png")
def student_world():
    """Lesson 03: the student against the learned global affine, the identity and the oracles (test photos)."""
    import matplotlib.pyplot as plt

    res = results("student_world.json")
    row = {(r["method"], r["wording"], r["group"]): r for r in res["rows"]}
    methods = [m for m in ("identity", "global affine (learned)", "student", "global affine (oracle)", "grid (oracle)")
               if any(k[0] == m for k in row)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    panels = ((axes[0], "psnr", "train", ("global", "content-aware"), "PSNR (dB), training wording"),
              (axes[1], "edit_accuracy", None, ("train", "heldout_phrasing", "heldout_synonym"),
               "edit accuracy (%), all items"))
    for ax, metric, wording, keys, title in panels:
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            vals = [row.get((m, wording, k) if wording else (m, k, "all"), {}).get(metric, float("nan")) for k in keys]
            ax.bar([i + j * width for i in range(len(keys))], vals, width=width, label=m,
                   hatch="//" if "oracle" in m else None, alpha=0.6 if "oracle" in m else 1.0)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [k.replace("_", " ") for k in keys], fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylim(bottom=15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f"test photos, {res['n']} items per wording at {res['size']} px", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=7, frameon=False)
    return fig


# lessons 04-05

def _bench_row(bench: dict, prefix: str) -> dict:
    return next(r for r in bench["rows"] if r["method"].startswith(prefix))


def _quality_and_cost(rows, figwidth: float, width_ratio: float, fontsize: int, legend: str):
    """Two panels: PSNR by wording (bars) for ``rows`` = [(label, bench row)], and the timed rows' cost."""
    import matplotlib.pyplot as plt

    bench = results("bench_retouch.json")
    fig, axes = plt.subplots(1, 2, figsize=(figwidth, 3), gridspec_kw={"width_ratios": [width_ratio, 1]})
    for k, (key, label) in enumerate((("psnr", "training wording"), ("psnr_heldout", "held-out phrasings"))):
        xs = [i + 0.38 * k for i in range(len(rows))]
        axes[0].bar(xs, [r[key] for _, r in rows], width=0.36, label=label)
    axes[0].set_xticks([i + 0.19 for i in range(len(rows))], [n for n, _ in rows], fontsize=fontsize)
    axes[0].set_ylim(min(r["psnr"] for _, r in rows) - 2, max(r["psnr"] for _, r in rows) + 1.5)
    axes[0].set_ylabel("PSNR to the target (dB)")
    axes[0].set_title(f"test photos, n = {bench['n']} per wording", fontsize=9)
    axes[0].legend(fontsize=7, loc=legend)
    timed = rows[1:]  # the first row (doing nothing) takes no time
    axes[1].bar([n for n, _ in timed], [r["ms_1080p"] for _, r in timed], color="gray")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms per 1080p photo (CPU)")
    axes[1].set_title(f"cost, {bench['threads']} thread(s)", fontsize=9)
    axes[1].tick_params(axis="x", labelsize=fontsize)
    fig.tight_layout()
    return fig


@figure("teacher_steps_cost.png")
def teacher_steps_cost():
    """Lesson 04: the teacher at 4 and 50 DDIM steps against doing nothing (PSNR by wording) and its cost."""
    bench = results("bench_retouch.json")
    rows = [("do nothing", _bench_row(bench, "identity")), ("teacher, 4 steps", _bench_row(bench, "teacher, 4 ")),
            ("teacher, 50 steps", _bench_row(bench, "teacher, 50 "))]
    return _quality_and_cost(rows, 8.5, 1.6, 8, "upper left")


@figure("teacher_probe.png")
def teacher_probe():
    """Lesson 04: PSNR of the teacher's one-call guess x̂0 at each t, with and without the instruction."""
    import matplotlib.pyplot as plt

    probe = results("teacher_world/film_tail.json")["probe"]
    ts = sorted(probe["t"], key=int)
    fig, ax = plt.subplots(figsize=(4.8, 3))
    for key, label in (("text", "with the instruction"), ("no_text", "without it (∅)")):
        ax.plot([int(t) for t in ts], [probe["t"][t][key] for t in ts], "o-", label=label)
    ax.axhline(probe["identity"], color="gray", ls="--", label="do nothing")
    ax.set_xlabel("timestep t (999 = pure noise)")
    ax.set_ylabel("PSNR of x̂0 (dB)")
    ax.set_title(f"one call's guess x̂0, {probe['n']} training crops", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@figure("vsd_student_cost.png")
def vsd_student_cost():
    """Lesson 05: the VSD student against the teacher, the supervised student and doing nothing, and their cost."""
    bench = results("bench_retouch.json")
    rows = [("do nothing", _bench_row(bench, "identity")), ("supervised\nstudent", _bench_row(bench, "student, supervised")),
            ("VSD student", _bench_row(bench, "student, VSD from scratch")),
            ("teacher,\n4 steps", _bench_row(bench, "teacher, 4 ")), ("teacher,\n50 steps", _bench_row(bench, "teacher, 50 "))]
    return _quality_and_cost(rows, 9.5, 1.7, 7, "upper right")


# lesson 07
@figure("inversion_editing.png")
def inversion_editing():
    """Lesson 07: reconstruction PSNR against time (plain DDIM at each step count, the trained
    4-step inverter), and editing by inversion against doing nothing, on the test photos."""
    import matplotlib.pyplot as plt

    res = results("inversion.json")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 1.25]})
    curve = res["steps_curve"]
    left.semilogx([r["ms_per_image"] for r in curve], [r["psnr"] for r in curve], "o-", c="#777777",
                  label="plain DDIM, n + n steps")
    for r in curve:
        left.annotate(str(r["steps"]), (r["ms_per_image"], r["psnr"]), textcoords="offset points",
                      xytext=(4, -10), fontsize=7, color="#555555")
    marks = [(r, "#1f5fa8") for r in res["reconstruction"] if not r["method"].startswith("DDIM")]
    marks += [(r, "#e08a00") for r in res.get("stages", [])]
    for r, colour in marks:
        left.plot(r["ms_per_image"], r["psnr"], "s", c=colour, ms=7,
                  label=r["method"].split(":")[0] + " (4 + 4 steps)")
    left.set_xlabel("ms per image (round trip)")
    left.set_ylabel("reconstruction PSNR (dB)")
    left.set_title("inverting and regenerating a test photo", fontsize=9)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)

    rows = res["editing"]
    ident = next(r for r in rows if r["method"] == "identity")
    colours = ["#999999" if r["method"] == "identity" else "#1f5fa8" if "Inverse-and-Edit" in r["method"]
               else "#e08a00" if r["method"].startswith("DDIM") else "#2e8b57" for r in rows]
    right.barh(range(len(rows)), [r["psnr"] for r in rows], color=colours)
    right.axvline(ident["psnr"], color="#b22222", ls="--", lw=1, label="doing nothing (identity)")
    right.set_yticks(range(len(rows)), [r["method"].replace(", reconstruction error removed", ", residual")
                                       for r in rows], fontsize=7)
    for k, r in enumerate(rows):
        right.text(r["psnr"] + 0.3, k, f"{r['direction']:.0f} % right way", va="center", fontsize=6.5)
    right.invert_yaxis()
    right.set_xlim(0, max(r["psnr"] for r in rows) * 1.3)
    right.set_xlabel("PSNR to the target edit (dB)")
    right.set_title("editing: against doing nothing", fontsize=9)
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(f"{res['n']} test photos at {res['resolution']} px; {res['perceptual'].split(' (')[0]}", fontsize=8)
    fig.tight_layout()
    return fig


@figure("slice_roofline.png")
def slice_roofline():
    """Lesson 02: the measured 1080p forward passes on the roofline of the machine that ran them (copy bandwidth
    and matrix-multiply peak of the same ``bench slice`` run): FLOPs executed per byte moved against FLOPs per second."""
    import matplotlib.pyplot as plt

    res = results("bench_slice.json")
    bw, peak = res["bandwidth_GBps"], res["matmul_GFLOPs"]
    rows = [r for r in res["rows"] if r["size"] == "1920x1080" and r["pass"] == "fwd" and r.get("flops")]
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    xs = [0.1 * 1.1**k for k in range(100)]
    ax.loglog(xs, [min(x * bw, peak) for x in xs], color="k", lw=1, label=f"roof: {bw:.0f} GB/s, {peak:.0f} GFLOP/s")
    for k, r in enumerate(rows):
        x, y = r["flops"] / r["bytes"], r["flops"] / r["ms"] / 1e6
        ax.plot([x], [y], "o^sDv<>p"[k % 8], ms=7, label=f"{r['impl']}: {r['ms']:.1f} ms")
    ax.set_xlabel("FLOPs executed per byte moved")
    ax.set_ylabel("GFLOP/s achieved")
    ax.set_title("slice + apply at 1080p, forward (bench_slice.json)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


# lesson 08
@figure("bench_quality_cost.png")
def bench_quality_cost():
    """Lesson 08: quality (PSNR, training wording and held-out phrasings) against the cost of one 1080p
    photo (log scale) for every timed method; the identity and the oracles, which are not timed, as lines."""
    import matplotlib.pyplot as plt

    bench = results("bench_retouch.json")
    timed = [r for r in bench["rows"] if r["ms_1080p"] == r["ms_1080p"]]  # NaN: a reference row
    refs = [r for r in bench["rows"] if r["ms_1080p"] != r["ms_1080p"]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, r in enumerate(timed):
        colour = f"C{k}"
        ax.plot([r["ms_1080p"]] * 2, [r["psnr"], r["psnr_heldout"]], "-", color=colour, lw=1)
        ax.plot(r["ms_1080p"], r["psnr"], "o", color=colour, ms=7)
        ax.plot(r["ms_1080p"], r["psnr_heldout"], "o", mfc="white", color=colour, ms=7)
        name = r["method"].replace(", no paired targets", "").split(" (lesson")[0]
        below = any(abs(q["psnr"] - r["psnr"]) < 2 and 0.67 < q["ms_1080p"] / r["ms_1080p"] < 1.5
                    for q in timed[:k])  # a neighbour's label is above: write this one below
        ax.annotate(name, (r["ms_1080p"], min(r["psnr"], r["psnr_heldout"]) if below else max(r["psnr"], r["psnr_heldout"])),
                    textcoords="offset points", xytext=(5, -11 if below else 4), fontsize=7, color=colour)
    for r, style in zip(refs, (":", "--", "-.")):
        ax.axhline(r["psnr"], color="gray", ls=style, lw=1)
        ax.text(1.01, r["psnr"], r["method"].split(":")[0] + (")" if ":" in r["method"] else ""),
                transform=ax.get_yaxis_transform(),
                va="center", fontsize=7, color="dimgray")
    ax.plot([], [], "o", color="k", label="training wording")
    ax.plot([], [], "o", mfc="white", color="k", label="held-out phrasings")
    ax.set_xscale("log")
    ax.set_xlim(min(r["ms_1080p"] for r in timed) / 2, max(r["ms_1080p"] for r in timed) * 3)
    ax.set_xlabel(f"ms per 1080p photo (CPU, {bench['threads']} thread(s), log scale)")
    ax.set_ylabel("PSNR to the target (dB)")
    ax.set_title(f"{bench['split']} photos, n = {bench['n']} per wording at {bench['size']} px; "
                 "grey lines: not timed (references)", fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# lesson 09
@figure("video_flicker.png")
def video_flicker():
    """Lesson 09: flicker (edit jump, grid flicker) and lag against the grid smoothing factor a, the teacher
    with fresh noise per frame and the trained student, the measured points; the same-noise teacher as a line."""
    import matplotlib.pyplot as plt

    res = results("video_smoothing.json")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, who, title in ((axes[0], "teacher", "teacher, fresh noise per frame"),
                           (axes[1], "student", "trained student")):
        rows = sorted(res[who], key=lambda r: r["a"])
        a = [r["a"] for r in rows]
        ax.plot(a, [r["edit_jump"] for r in rows], "o-", label="edit jump")
        ax.plot(a, [r["grid_flicker"] for r in rows], "s-", label="grid flicker")
        ax.plot(a, [r["lag"] for r in rows], "^--", color="gray", label="lag (price)")
        if who == "teacher":
            ax.axhline(res["same_noise"]["edit_jump"], color="tab:red", ls=":", lw=1,
                       label="same noise every frame: edit jump")
        ax.set_xlabel("smoothing factor a")
        ax.set_ylabel("8-bit levels")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"'{res['instruction']}' on a {res['frames']}-frame clip of {res['photo']}, "
                 f"{res['width']} x {res['height']} px", fontsize=9)
    fig.tight_layout()
    return fig
