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
