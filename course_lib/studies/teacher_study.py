"""The teacher's studies, read from their results files (``data/results/teacher_world/``): which
conditioning makes the teacher know the edit (the x̂0 probe of each variant) and what size is worth
its training time. Lesson 04 renders both; ``teacher-eval --probe --json`` wrote the files.
"""
from __future__ import annotations

from ..eval import tables

#: The teacher study: results files under ``data/results/teacher_world/`` and what each
#: variant is (the numbers, training steps included, come from the files).
STUDY_VARIANTS: dict[str, str] = {
    "pooled_token": "fine-tuned on the world, pooled MiniLM token",
    "reader_init": "the same + instruction reader (tokens)",
    "film_scratch": "from scratch: instruction reader + FiLM",
    "film_cooled": "the same, trained on, the rate cooled down at the end",
    "film_tail": "the same, fine-tuned on at the cool-down's last rate (shipped)",
}


def study_summary(saved: dict) -> dict:
    """One variant of the teacher study from its ``teacher-eval --probe --json`` file:
    the identity's and the teacher's PSNR (all items) per wording and step count, the x̂0 probe,
    the training record, ``groups`` (global / content-aware: identity and teacher PSNR with the training
    wording at the most steps) and ``meets`` (the targets)."""
    ps = {(r["wording"], r["method"], r["steps"]): r["psnr"] for r in saved["rows"] if r["group"] == "all"}
    steps = sorted({k for _, m, k in ps if m == "teacher"})
    out = {"identity": ps[("train", "identity", 0)], "train": {k: ps[("train", "teacher", k)] for k in steps},
           "heldout": {k: ps[("heldout_phrasing", "teacher", k)] for k in steps}, "probe": saved.get("probe"),
           "record": saved.get("teacher_train") or {}}
    # the targets at the most steps: identity + 3 dB with training wording, ≥ identity with held-out phrasings
    k = steps[-1]
    # training wording at the most steps, per group: {"global": (identity, teacher), "content-aware": (...)}
    grp = {(r["method"], r["steps"], r["group"]): r["psnr"] for r in saved["rows"] if r["wording"] == "train"}
    out["groups"] = {g: (grp[("identity", 0, g)], grp[("teacher", k, g)]) for g in ("global", "content-aware")
                     if ("identity", 0, g) in grp and ("teacher", k, g) in grp}
    out["meets"] = {"train": out["train"][k] >= out["identity"] + 3, "heldout": out["heldout"][k] >= out["identity"]}
    return out


def study_table(summaries: dict[str, dict]) -> str:
    """Markdown: one row per variant (:func:`study_summary`): its training steps, parameters, the x̂0 probe at
    t = 999 (PSNR with and without text, the change's cosine and RMS against the truth's) and the PSNR of
    4- and 50-step edits on the test photos with both wordings, the identity's in the header."""
    first = next(iter(summaries.values()))
    steps = sorted(first["train"])
    head = (["variant", "training steps", "parameters", "x̂0 @ t=999 dB", "no text", "change cosine", "RMS pred / true"]
            + [f"{w} {k} steps" for w in ("training wording", "held-out phrasing") for k in steps])
    out = [f"identity (no edit): {first['identity']:.2f} dB on the test photos, "
           f"{first['probe']['identity']:.2f} dB on the probe's training crops" if first.get("probe") else "",
           "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    def c(v, fmt):  # a missing value reads "-"
        return tables.cell(float("nan") if v is None else v, fmt)

    for name, s in summaries.items():
        rec, pr = s["record"], s["probe"] or {}
        t999 = (pr.get("t") or {}).get("999") or (pr.get("t") or {}).get(999) or {}
        init = (rec.get("init") or {}).get("file")
        cool = f" (the last {rec['cooldown']} cooling)" if rec.get("cooldown") else ""
        cells = [STUDY_VARIANTS.get(name, name), c(rec.get("steps"), "{}") + cool + (f" after {init}" if init else ""),
                 c(rec["parameters"] / 1e6 if rec.get("parameters") else None, "{:.2f} M"),
                 c(t999.get("text"), "{:.2f}"), c(t999.get("no_text"), "{:.2f}"), c(pr.get("cosine"), "{:.2f}"),
                 c(pr["rms_pred"] / pr["rms_true"] if pr else None, "{:.2f}")]
        cells += [c(s[w][k], "{:.2f}") for w in ("train", "heldout") for k in steps]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_x0_probe(summaries: dict[str, dict]):
    """PSNR of the one-call guess x̂0 against the timestep for each variant, with and without the text
    (dotted), the identity as a dashed line: where in the noise range a teacher knows the edit."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for k, (name, s) in enumerate(x for x in summaries.items() if x[1].get("probe")):
        pr = s["probe"]
        ts = sorted(int(t) for t in pr["t"])
        get = {int(t): v for t, v in pr["t"].items()}
        ax.plot(ts, [get[t]["text"] for t in ts], "o-", c=f"C{k}", label=STUDY_VARIANTS.get(name, name))
        ax.plot(ts, [get[t]["no_text"] for t in ts], ":", c=f"C{k}")
    ident = next(s["probe"]["identity"] for s in summaries.values() if s.get("probe"))
    ax.axhline(ident, ls="--", c="gray", label="identity (no edit)")
    ax.set(xlabel="timestep t (999 = pure noise)", ylabel="PSNR of x̂0 (dB)",
           title="what one call of the teacher knows (dotted: without the text)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


#: The teacher's size study: the shipped world recipe trained for about the same wall time at
#: another working size or width, scored on the validation photos. ``data/results/teacher_world/size_NAME.json``.
SIZE_VARIANTS: dict[str, str] = {
    "32px": "32 px, widths 32-64-128 (the shipped size)",
    "32px_wide": "32 px, widths 64-128-256",
    "48px": "48 px, widths 32-64-128",
    "64px": "64 px, widths 32-64-128",
}


def size_summary(saved: dict) -> dict:
    """One row of the size study from its ``teacher-eval --split val --probe --json`` file.

    Returns:
        ``resolution``, ``parameters``, ``steps`` and ``seconds`` (the UNet's training time, two ranks),
        ``s_per_step``, ``ms_per_image`` (one edit at the fewest steps), and the gains in dB over doing
        nothing at the teacher's own size: ``train`` / ``heldout`` (the edit at the fewest steps, training
        wording / held-out phrasings, all items) and ``probe`` (x̂0 at t = 999 on training crops), ``cosine``.
    """
    rec = saved.get("teacher_train") or {}
    ps = {(r["wording"], r["method"], r["steps"]): r for r in saved["rows"] if r["group"] == "all"}
    k = min(s for _, m, s in ps if m == "teacher")
    gain = {w: ps[(w, "teacher", k)]["psnr"] - ps[(w, "identity", 0)]["psnr"] for w in ("train", "heldout_phrasing")}
    pr = saved.get("probe") or {}
    t999 = (pr.get("t") or {}).get("999") or {}
    seconds, steps = rec.get("seconds_this_run"), rec.get("steps")
    return {"resolution": saved.get("resolution"), "parameters": rec.get("parameters"), "steps": steps,
            "seconds": seconds, "s_per_step": seconds / steps if seconds and steps else None,
            "sample_steps": k, "ms_per_image": ps[("train", "teacher", k)].get("ms_per_image"),
            "train": gain["train"], "heldout": gain["heldout_phrasing"],
            "probe": t999["text"] - pr["identity"] if t999 and "identity" in pr else None, "cosine": pr.get("cosine")}


def size_table(summaries: dict[str, dict]) -> str:
    """Markdown: one row per size (:func:`size_summary`): cost (parameters, seconds per training step, steps
    and minutes trained, ms per edit) against quality (gains over doing nothing, in dB)."""
    k = next(iter(summaries.values()))["sample_steps"]
    head = ["teacher", "parameters", "s / training step", "steps trained", "minutes", f"ms / edit ({k} steps)",
            "x̂0 @ t=999 gain", "change cosine", f"gain, training wording ({k} steps)", "gain, held-out phrasing"]

    def c(v, fmt):
        return tables.cell(float("nan") if v is None else v, fmt)

    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, s in summaries.items():
        cells = [SIZE_VARIANTS.get(name, name), c(s["parameters"] / 1e6 if s["parameters"] else None, "{:.2f} M"),
                 c(s["s_per_step"], "{:.2f}"), c(s["steps"], "{}"), c(s["seconds"] / 60 if s["seconds"] else None, "{:.0f}"),
                 c(s["ms_per_image"], "{:.0f}"), c(s["probe"], "{:+.2f}"), c(s["cosine"], "{:.2f}"),
                 c(s["train"], "{:+.2f}"), c(s["heldout"], "{:+.2f}")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_size_study(summaries: dict[str, dict]):
    """Quality against cost: each size's gain over doing nothing (training wording, validation photos) against
    the seconds one training step costs, the marker's area growing with the parameters."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (name, s) in enumerate(summaries.items()):
        ax.scatter(s["s_per_step"], s["train"], s=20 + 15 * (s["parameters"] or 0) / 1e6, c=f"C{i}",
                   label=SIZE_VARIANTS.get(name, name))
    ax.axhline(0, ls="--", c="gray", label="doing nothing")
    ax.set(xlabel="seconds per training step (two CPU ranks)", ylabel="gain over doing nothing (dB)",
           title="the same training time, different sizes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["STUDY_VARIANTS", "study_summary", "study_table", "plot_x0_probe", "SIZE_VARIANTS", "size_summary",
           "size_table", "plot_size_study"]
