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


def write_figures(names=None, out_dir: Path = FIGURES_DIR) -> list[str]:
    """Draw the registered figures (all, or ``names``) and write those whose bytes changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in names or sorted(FIGURES):
        fig = FIGURES[name]()
        new = png_bytes(fig)
        plt.close(fig)
        path = Path(out_dir) / name
        if path.is_file() and path.read_bytes() == new:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(new)
        written.append(str(path))
    return written


@figure("vsd_alignment.png")
def vsd_alignment():
    """Lesson 06: edit accuracy and PSNR of VSD with and without the alignment loss, by wording."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric, label in ((axes[0], "psnr", "PSNR to the teacher's edit (dB)"),
                              (axes[1], "edit_accuracy", "edit accuracy (%)")):
        for k, wording in enumerate(("train", "heldout")):
            rows = [r for r in results(f"vsd_align_{wording}.json")["rows"]
                    if r["group"] == "all" and r["method"].startswith("VSD")]
            xs = [i + 0.38 * k for i in range(len(rows))]
            ax.bar(xs, [r[metric] for r in rows], width=0.36,
                   label="training wording" if wording == "train" else "held-out phrasings")
            ax.set_xticks([i + 0.19 for i in range(len(rows))], [r["method"] for r in rows],
                          rotation=20, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
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
