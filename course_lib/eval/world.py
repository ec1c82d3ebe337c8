"""``python -m course_lib evaluate`` : the student on test photos, by wording and kind of edit.

Items are :class:`course_lib.world.RetouchWorld` crops of the **test photos** (never seen in
training) with three wordings: the training grammar (``train``), held-out whole phrasings
(``heldout_phrasing``) and held-out synonyms (``heldout_synonym``). Each table row is split by
kind of edit: **global** (every edit of the instruction is one of the nine global colour families)
and **content-aware** (at least one colour-selective, spatial, region or clarity edit).

Methods: ``identity``; ``global affine (oracle)`` (the best single 3x4 transform fitted to the
target: an upper bound for any global transform); ``grid (oracle)`` (the bilateral grid fitted
to the target by BGU, :func:`course_lib.oracle.oracle_fits`: an upper bound for the student's
grid with a luma guide; training wording only, it does not read the text); ``global affine
(learned)`` (the baseline: the student's network collapsed to one transform); ``student``.

Scores (:mod:`course_lib.eval.score`): PSNR, ΔE00, edit accuracy (went half-way to the target),
drift (structure change; a spatial ground truth has some too, shown in the ``target`` row),
locality (did it change where the target changed). The "understood as" heads are scored
separately: how often the set of edits read (presence >= the checkpoint's threshold, with the
right signs) equals the instruction's, how often a real instruction is refused, and how often
requests that name no edit (held-out ones) are refused.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .. import config, grammar, world
from ..metrics import apply_affine, fit_global_affine, latency_ms
from ..oracle import oracle_fits
from ..student import read_instruction
from . import score as S, tables
from .heldout import SEED, heldout_batch

WORDINGS = grammar.WORDINGS_KINDS
KEYS = ("psnr", "de00", "edit_accuracy", "drift", "locality")
GROUPS = ("all", "global", "content-aware")
METHODS = ("identity", "global affine (oracle)", "grid (oracle)", "global affine (learned)", "student")


def kind_of(edits: str) -> str:
    """``"global"`` if every edit is of a global family, ``"content-aware"`` otherwise, ``"none"`` for ""."""
    fams = [e.family for e in world.decode_world_edits(edits)]
    if not fams:
        return "none"
    return "content-aware" if any(f in world.NEW_FAMILIES for f in fams) else "global"


def world_batch(n: int, size: int, wording: str = "train", seed: int = SEED, split: str = "test") -> dict:
    """``n`` items of the test photos in one wording, as one batch dict (``source``, ``target``
    (n, 3, size, size), ``instruction``, ``edits``, ``kind`` lists). The same arguments give the same items."""
    batch = heldout_batch(n, size, seed, wording, split)
    return {**batch, "kind": [kind_of(e) for e in batch["edits"]]}


def _student(model) -> S.Method:
    return lambda s, i, t: model(s.to(model.device), model.embed(i)).clamp(0, 1).cpu()


def methods(model=None, baseline=None, grid_oracle: bool = True) -> dict[str, S.Method]:
    """The rows of :data:`METHODS` that can run."""
    fns: dict[str, S.Method] = {"identity": lambda s, i, t: s,
                                "global affine (oracle)": lambda s, i, t: apply_affine(fit_global_affine(s, t), s)}
    if grid_oracle:
        fns["grid (oracle)"] = lambda s, i, t: oracle_fits(s, t)["grid"]
    if baseline is not None:
        fns["global affine (learned)"] = _student(baseline)
    if model is not None:
        fns["student"] = _student(model)
    return {k: fns[k] for k in METHODS if k in fns}


def group_scores(items: dict[str, torch.Tensor], kinds: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-image scores -> one summary per group of :data:`GROUPS` (plus ``n``)."""
    out = {}
    for g in GROUPS:
        idx = torch.tensor([i for i, k in enumerate(kinds) if g == "all" or k == g], dtype=torch.long)
        out[g] = {"n": len(idx), **(S.summarise({k: v[idx] for k, v in items.items()}) if len(idx) else {})}
    return out


def readout_scores(model, instructions: Sequence[str], edits: Sequence[str]) -> dict[str, float]:
    """How well the "understood as" heads read instructions (all name at least one edit).

    Returns:
        ``understood`` (% whose read set of (label, sign) equals the named one), ``family_direction``
        (% of named edits read with the right family and sign, whatever the target), ``refused`` (%
        read as nothing).
    """
    reads = read_instruction(model, list(instructions))
    return score_reads([{(x["label"], x["strength"] > 0) for x in r} for r in reads], edits)


def score_reads(reads: Sequence[set], edits: Sequence[str]) -> dict[str, float]:
    """:func:`readout_scores` from the read sets: one set of ``(label, positive)`` per instruction."""
    exact = fam_dir = named_total = refused = 0
    for got, e in zip(reads, edits):
        named = {(x.family + (f"@{x.target}" if x.target else ""), x.amount > 0) for x in world.decode_world_edits(e)}
        exact += got == named
        refused += not got
        got_fd = {(lab.partition("@")[0], sign) for lab, sign in got}
        for lab, sign in named:
            named_total += 1
            fam_dir += (lab.partition("@")[0], sign) in got_fd
    n = max(len(reads), 1)
    return {"understood": 100 * exact / n, "family_direction": 100 * fam_dir / max(named_total, 1),
            "refused": 100 * refused / n}


def refusal_of_non_edits(model, n: int = 200, seed: int = SEED) -> float:
    """% of held-out requests that name no edit (phrases never trained on, fresh letter strings) refused."""
    rng = np.random.default_rng([seed, 7])
    texts = [grammar.non_edit_text(rng, "heldout") for _ in range(n)]
    return 100 * sum(not r for r in read_instruction(model, texts)) / n


def evaluate_world(model=None, baseline=None, n: int | None = None, size: int | None = None,
                   wordings: Sequence[str] = WORDINGS, seed: int = SEED, batch_size: int = 16,
                   grid_oracle: bool = True) -> dict:
    """Score every method on the test photos, per wording and kind of edit.

    Args:
        model: a :class:`course_lib.student.Student` (``None``: its rows left out).
        baseline: the learned global-affine student (``None``: its row left out).
        n: items per wording (default 24 FAST / 240 FULL). size: crop side (default 96 / 192).
        wordings: any of :data:`WORDINGS`.
        grid_oracle: include the BGU grid oracle (training wording only; about 0.3 s per item).

    Returns:
        dict with ``rows`` (one per wording x method x group: ``wording``, ``method``, ``group``,
        ``n`` and the scores of :data:`KEYS`), ``readout`` (per wording, :func:`readout_scores`),
        ``non_edit_refusal`` (%), ``target_drift`` (mean drift of the ground truth per group),
        ``threshold``, ``n``, ``size``, ``seed``.
    """
    n = n or config.pick(fast=24, full=240)
    size = size or config.pick(fast=96, full=192)
    rows, readout, target_drift = [], {}, {}
    for w in wordings:
        batch = world_batch(n, size, w, seed)
        fns = methods(model, baseline, grid_oracle=grid_oracle and w == "train")
        for name, fn in fns.items():
            items = S.run(fn, batch, batch_size, KEYS)["items"]
            for g, sc in group_scores(items, batch["kind"]).items():
                rows.append({"wording": w, "method": name, "group": g, **sc})
        if w == "train":
            drift = S.per_item(batch["target"], batch, ("drift",))
            target_drift = {g: v.get("drift", math.nan) for g, v in group_scores(drift, batch["kind"]).items()}
        if model is not None and model.cfg.readout:
            readout[w] = readout_scores(model, batch["instruction"], batch["edits"])
    has_readout = model is not None and bool(model.cfg.readout)
    return {"rows": rows, "readout": readout, "target_drift": target_drift,
            "non_edit_refusal": refusal_of_non_edits(model, seed=seed) if has_readout else math.nan,
            "threshold": model.cfg.readout_threshold if has_readout else math.nan,
            "n": n, "size": size, "seed": seed}


def latencies(models: dict, repeats: int = 5, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per 1080p photo of several students, measured side by side in one run.

    Each round times every model once (``repeats`` calls, median), so that load on a shared
    machine hits them alike; the result is the median over rounds.

    Args:
        models: name -> :class:`course_lib.student.Student`.
    """
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            text = m.embed(["make the sky warmer"])  # embedding cached: not timed
            times[name].append(latency_ms(lambda im, m=m, t=text: m(im, t).clamp(0, 1), repeats=repeats,
                                          device=m.device))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def row(result: dict, wording: str, method: str, group: str = "all") -> dict:
    """One row of a result (``{}`` when absent)."""
    return next((r for r in result["rows"] if (r["wording"], r["method"], r["group"]) == (wording, method, group)), {})


def markdown(result: dict) -> str:
    """The evaluation as Markdown: one table per wording (methods x groups), then the readout."""
    parts = [f"Test photos, {result['n']} items per wording at {result['size']} px (seed {result['seed']}); "
             f"ground-truth drift: " + ", ".join(f"{g} {v:.2f}" for g, v in result["target_drift"].items()) + "."]
    for w in dict.fromkeys(r["wording"] for r in result["rows"]):
        rows = [{**r, "method": f"{r['method']} [{r['group']}]"} for r in result["rows"] if r["wording"] == w]
        parts.append(tables.markdown(rows, ("method", "n", *KEYS), title=f"Wording: {w.replace('_', ' ')}"))
    if result["readout"]:
        rr = [{"wording": w, **v} for w, v in result["readout"].items()]
        parts.append(tables.markdown(rr, ("wording", "understood", "family_direction", "refused"),
                                     title=f"'Understood as' heads (threshold {result['threshold']:.2f}), % of items:"))
        parts.append(f"Held-out requests that name no edit refused: {result['non_edit_refusal']:.0f} %.")
    if result.get("ms_1080p"):
        parts.append("Latency per 1080p photo, side by side: "
                     + ", ".join(f"{k} {v:.1f} ms" for k, v in result["ms_1080p"].items())
                     + (f" (other = {result['latency_against']})" if result.get("latency_against") else "") + ".")
    return "\n\n".join(parts)


def group_table(result: dict, key: str = "psnr", methods: Sequence[str] = METHODS) -> str:
    """One compact table: methods x (wording, group) for one score (default PSNR)."""
    cols = [(w, g) for w in dict.fromkeys(r["wording"] for r in result["rows"]) for g in ("global", "content-aware")]
    val = {(r["method"], r["wording"], r["group"]): r[key] for r in result["rows"]}
    head = "| method | " + " | ".join(f"{w.replace('_', ' ')}, {g}" for w, g in cols) + " |\n|---|" + "---:|" * len(cols)
    lines = [head]
    for m in methods:
        cells = [val.get((m, w, g)) for w, g in cols]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {m} | " + " | ".join("-" if c is None or (isinstance(c, float) and math.isnan(c))
                                               else f"{c:.2f}" if key != "edit_accuracy" else f"{c:.0f}"
                                               for c in cells) + " |")
    return "\n".join(lines)


def targets(result: dict) -> dict[str, float]:
    """The student's targets, computed from an evaluation (:func:`evaluate_world`):

    - ``heldout_over_train``: the student's instruction (edit) accuracy on held-out phrasings
      divided by its accuracy with training wording (all items; target >= 0.8);
    - ``content_aware_gain_db``: student minus learned global-affine PSNR on content-aware
      items with training wording (target >= 3 dB), and ``content_aware_gain_db_<wording>`` for
      the others;
    - ``latency_ratio``: student / ``other`` ms per 1080p when measured side by side (<= 1.2).
    """
    val = {(r["method"], r["wording"], r["group"]): r for r in result["rows"]}
    out = {}
    tr, ho = val.get(("student", "train", "all")), val.get(("student", "heldout_phrasing", "all"))
    if tr and ho:
        out["heldout_over_train"] = ho["edit_accuracy"] / max(tr["edit_accuracy"], 1e-9)
    for w in dict.fromkeys(r["wording"] for r in result["rows"]):
        s, b = val.get(("student", w, "content-aware")), val.get(("global affine (learned)", w, "content-aware"))
        if s and b:
            out["content_aware_gain_db" + ("" if w == "train" else f"_{w}")] = s["psnr"] - b["psnr"]
    ms = result.get("ms_1080p") or {}
    if "student" in ms and "other" in ms:
        out["latency_ratio"] = ms["student"] / ms["other"]
    return out
