"""``python -m course_lib.eval.reader``: how well the student reads instructions, per kind of wording.

The reader (the student's text pathway and "understood as" heads, :func:`course_lib.student.read_instruction`)
is scored on fresh instructions of the grammar in each wording kind - training wording, held-out
whole phrasings, held-out synonyms (:data:`course_lib.grammar.HELDOUT_SYNONYMS`: words of no
training text) - on held-out requests that name no edit, and on :data:`EVERYDAY`: instructions
written by hand, *not* from the grammar, as people type them. Per set:

- ``understood``: % of instructions whose read set of (label, sign) is exactly the named one;
- ``family_direction``: % of named edits read with the right family and sign (whatever the target);
- ``refused``: % of real instructions read as nothing (false refusal);
- ``non_edit_refusal``: % of requests naming no edit that are refused.

For region and colour-range edits it also measures where the edit lands on the world's test photos
(:func:`leak_study`): the mean change outside the named region over the mean change inside (the
*leak*; 0 is perfectly local), next to PSNR. Everything goes into one results file
(``data/results/reader.json``) with the command that wrote it; lesson 03 renders its table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import config, grammar, world
from ..student import UNSURE_FACTOR, closest_readings, featurise, load_student, read_instruction, understood_line
from ..text import MiniLMEncoder, shared_encoder
from .heldout import SEED
from .world import latencies, score_reads

#: Hand-written everyday instructions (not from the grammar) and the readings that count as right:
#: ``(text, alternatives)``, each alternative a set of ``"label+"``/``"label-"`` (label
#: ``family`` or ``family@target``, sign the direction). Where people mean either of two edits
#: ("the sea a deeper blue": bluer or darker blues) both are accepted.
EVERYDAY: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("make the foliage more vivid", (("region_saturation@foliage+",), ("hsl_saturation@greens+",))),
    ("it's too yellowish", (("temperature-",),)),
    ("give it a chilly feel", (("temperature-",),)),
    ("make the sea a deeper blue", (("hsl_saturation@blues+",), ("hsl_luminance@blues-",))),
    ("bleach the colours", (("saturation-",),)),
    ("turn it nearly monochrome", (("saturation-",),)),
    ("make the leaves orange", (("hsl_hue@greens-",),)),
    ("make it look icy", (("temperature-",),)),
    ("give it a frosty look", (("temperature-",),)),
    ("make it feel like a summer afternoon", (("temperature+",),)),
    ("the sky is a bit dull", (("region_saturation@sky+",), ("region_exposure@sky+",))),
    ("brighten up the faces", (("region_exposure@skin+",),)),
    ("make the clouds brighter", (("region_exposure@sky+",),)),
    ("this picture is way too dark", (("exposure+",),)),
    ("tone down the oranges a little", (("hsl_saturation@oranges-",),)),
    ("make the teal colours more saturated", (("hsl_saturation@aquas+",),)),
    ("the corners need to be darker", (("radial_exposure@edges-",),)),
    ("lighten the bottom of the photo", (("graduated_exposure@bottom+",),)),
    ("the shadows are too murky", (("shadows+",),)),
    ("the whites are blown out", (("highlights-",),)),
    ("it has a green cast, fix it", (("tint+",),)),
    ("make it less blue", (("temperature+",),)),
    ("more contrast please", (("contrast+",),)),
    ("make it softer and dreamier", (("clarity-",),)),
    ("sharpen up the details", (("clarity+",),)),
    ("warm up the skin tones", (("region_temperature@skin+",),)),
    ("make the reds richer", (("hsl_saturation@reds+",),)),
    ("darken the blues", (("hsl_luminance@blues-",),)),
    ("the colours are too loud", (("saturation-",),)),
    ("boost the colours of the sky", (("region_saturation@sky+",),)),
    ("dim the whole thing", (("exposure-",),)),
    ("make the trees lush", (("region_saturation@foliage+",),)),
    ("it feels too cold", (("temperature+",),)),
    ("the shot is underexposed", (("exposure+",),)),
    ("knock back the highlights", (("highlights-",),)),
    ("make the purple flowers more vibrant", (("hsl_saturation@purples+",),)),
    ("make it warmer and brighter", (("temperature+", "exposure+"),)),
    ("give it a faded film look", (("tone_curve-",),)),
    ("the grass should be greener and the sky bluer",
     (("region_saturation@foliage+", "region_temperature@sky-"), ("region_saturation@foliage+", "hsl_saturation@blues+"))),
    ("cool the whole picture down a touch", (("temperature-",),)),
)
#: Hand-written everyday requests that name no edit (none of them in any training text).
EVERYDAY_NON_EDITS = ("what a beautiful place", "who took this picture?", "can you print two copies?",
                      "this is my grandmother", "lovely colours in this one", "how old is this photo?",
                      "the sky was blue that day", "share it with my family", "i love this", "undo")


def _labels(alt: Sequence[str]) -> set[tuple[str, bool]]:
    return {(a[:-1], a[-1] == "+") for a in alt}


def score_everyday(reads: Sequence[set], cases=EVERYDAY) -> dict[str, float]:
    """Scores of read sets (``(label, positive)`` per instruction) against :data:`EVERYDAY`-style cases:
    ``understood`` (the read set is one of the accepted ones), ``family_direction`` (every family and
    sign of some accepted reading is read), ``refused``."""
    exact = fam = refused = 0
    for got, (_, alts) in zip(reads, cases):
        got_fd = {(lab.partition("@")[0], s) for lab, s in got}
        exact += any(got == _labels(a) for a in alts)
        fam += any({(lab.partition("@")[0], s) for lab, s in _labels(a)} <= got_fd for a in alts)
        refused += not got
    n = max(len(cases), 1)
    return {"understood": 100 * exact / n, "family_direction": 100 * fam / n, "refused": 100 * refused / n}


def unseen_words(text: str) -> list[str]:
    """Words of ``text`` that no training text of the reader has (:func:`course_lib.grammar.reader_vocabulary`)."""
    return sorted(grammar.words(text) - grammar.reader_vocabulary())


def wording_set(n: int, wording: str, seed: int = SEED, salt: int = 70_000) -> tuple[list[str], list[str]]:
    """``n`` fresh instructions of the grammar in one wording and their encoded edits (deterministic;
    ``salt`` keeps one study's set apart from another's)."""
    rng = np.random.default_rng([salt, seed, grammar.WORDINGS_KINDS.index(wording)])
    texts, edits = [], []
    for _ in range(n):
        t, e = world.sample_world_instruction(rng, wording)
        texts.append(t)
        edits.append(world.encode_world_edits(e))
    return texts, edits


def _read_sets(model, texts: Sequence[str]) -> list[set]:
    return [{(x["label"], x["strength"] > 0) for x in r} for r in read_instruction(model, list(texts))]


def _refused_with_fallback(model, texts: Sequence[str]) -> float:
    """% of texts the apps refuse: not even the most likely edit reaches ``UNSURE_FACTOR`` times the
    threshold (:func:`course_lib.student.interpret` applies it, saying it was not sure)."""
    top = [r[0]["p"] if r else 0.0 for r in closest_readings(model, list(texts), 1)]
    return 100 * sum(p < UNSURE_FACTOR * model.cfg.readout_threshold for p in top) / max(len(top), 1)


def reader_report(model, n: int = 1000, n_non_edits: int = 300, seed: int = SEED) -> dict:
    """Every reading score of one student (see the module docstring).

    Returns:
        dict ``wordings`` (wording -> scores), ``non_edit_refusal`` (% of held-out non-edits refused),
        ``everyday`` (scores on :data:`EVERYDAY`), ``everyday_unseen`` (the same on the cases with a
        word of no training text), ``everyday_non_edit_refusal``, ``readings`` (text -> understood
        line, for :data:`EVERYDAY`), ``threshold``.
    """
    out: dict = {"wordings": {}, "n": n, "seed": seed, "threshold": model.cfg.readout_threshold}
    for w in grammar.WORDINGS_KINDS:
        texts, edits = wording_set(n, w, seed)
        out["wordings"][w] = score_reads(_read_sets(model, texts), edits)
        out.setdefault("refused_with_fallback", {})[w] = _refused_with_fallback(model, texts)
    rng = np.random.default_rng([seed, 7])
    non = [grammar.non_edit_text(rng, "heldout") for _ in range(n_non_edits)]
    out["non_edit_refusal"] = 100 * sum(not r for r in _read_sets(model, non)) / n_non_edits
    out["non_edit_refusal_with_fallback"] = _refused_with_fallback(model, non)
    texts = [t for t, _ in EVERYDAY]
    reads = _read_sets(model, texts)
    out["everyday"] = score_everyday(reads)
    out["refused_with_fallback"]["everyday"] = _refused_with_fallback(model, texts)
    unseen = [i for i, t in enumerate(texts) if unseen_words(t)]
    out["everyday_unseen"] = {**score_everyday([reads[i] for i in unseen], [EVERYDAY[i] for i in unseen]),
                              "n": len(unseen)}
    out["everyday_non_edit_refusal"] = 100 * sum(not r for r in _read_sets(model, EVERYDAY_NON_EDITS)) / len(
        EVERYDAY_NON_EDITS)
    out["readings"] = {t: understood_line(r) for t, r in zip(texts, read_instruction(model, texts))}
    return out


ROWS = ("train", "heldout_phrasing", "heldout_synonym", "everyday", "everyday_unseen")


def table_rows(report: dict) -> list[dict]:
    """One row per wording kind: ``kind``, ``understood``, ``family_direction``, ``refused`` (%)."""
    rows = [{"kind": w, **report["wordings"][w]} for w in grammar.WORDINGS_KINDS]
    rows.append({"kind": f"everyday (hand-written, {len(EVERYDAY)})", **report["everyday"]})
    rows.append({"kind": f"everyday with an unseen word ({report['everyday_unseen']['n']})",
                 **{k: v for k, v in report["everyday_unseen"].items() if k != "n"}})
    return rows


def targets(report: dict) -> dict[str, tuple[float, str, bool]]:
    """Issue 37's reading targets for one reader's report: name -> (value, target, met)."""
    w = report["wordings"]
    rows = {"family + direction, held-out phrasings (%)": (w["heldout_phrasing"]["family_direction"], ">= 95", 95),
            "family + direction, held-out synonyms (%)": (w["heldout_synonym"]["family_direction"], ">= 85", 85),
            "non-edits refused (%)": (report["non_edit_refusal"], ">= 95", 95)}
    out = {k: (v, t, v >= lim) for k, (v, t, lim) in rows.items()}
    worst = max(w[k]["refused"] for k in w)
    out["false refusal, worst wording kind (%)"] = (worst, "<= 3", worst <= 3)
    return out


def markdown(result: dict) -> str:
    """Before/after table per wording kind, then the non-edit refusals (and the leak study when present)."""
    names = list(result["readers"])
    head = ("| wording kind | " + " | ".join(f"{n}: exact / fam+dir / refused (%)" for n in names)
            + " |\n|---|" + "---:|" * len(names))
    lines = [head]
    tables = {n: table_rows(r) for n, r in result["readers"].items()}
    for i, row in enumerate(tables[names[0]]):
        cells = [f"{t[i]['understood']:.0f} / {t[i]['family_direction']:.0f} / {t[i]['refused']:.1f}"
                 for t in (tables[n] for n in names)]
        lines.append(f"| {row['kind']} | " + " | ".join(cells) + " |")
    lines.append("| requests naming no edit, refused (held-out grammar / hand-written) | " + " | ".join(
        f"{r['non_edit_refusal']:.0f} / {r['everyday_non_edit_refusal']:.0f}" for r in result["readers"].values())
                 + " |")
    lines.append("| apps, with the 'not sure' fallback: real requests refused (train / phrasing / synonym / everyday); "
                 "non-edits refused | " + " | ".join(
                     " / ".join(f"{r['refused_with_fallback'][k]:.1f}" for k in (*grammar.WORDINGS_KINDS, "everyday"))
                     + f"; {r['non_edit_refusal_with_fallback']:.0f}" for r in result["readers"].values()) + " |")
    parts = ["\n".join(lines)]
    if result.get("leak"):
        lk = result["leak"]
        rows = ["| student | leak (out / in) | PSNR (dB) | n |\n|---|---:|---:|---:|"]
        rows += [f"| {k} | {v['leak']:.3f} | {v['psnr']:.2f} | {v['n']} |" for k, v in lk["students"].items()]
        rows.append(f"| target (ground truth) | {lk['target_leak']:.3f} | - | {lk['n']} |")
        parts.append("Region and colour-range edits on the test photos:\n\n" + "\n".join(rows))
    last = list(result["readers"])[-1]
    parts.append(f"Targets ({last}): " + "; ".join(f"{k} {v:.1f} (target {t}: {'met' if ok else 'not met'})"
                                                for k, (v, t, ok) in targets(result["readers"][last]).items()) + ".")
    if result.get("ms_1080p"):
        parts.append("Milliseconds per 1080p photo, side by side: " + ", ".join(
            f"{k} {v:.0f}" for k, v in result["ms_1080p"].items()) + "; reading a new instruction (once per "
            "request): " + ", ".join(f"{k} {v:.0f}" for k, v in result["ms_read"].items()) + ".")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- where edits land


def region_mask(img: torch.Tensor, family: str, target: str) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W) soft mask in [0, 1] of a target: a colour range's hue weights or a
    content region's mask (:mod:`course_lib.world`)."""
    if target in world.HUE_RANGES:
        return world.hue_mask(img, target).reshape(img.shape[0], *img.shape[-2:])
    return world.REGION_MASKS[target](img).reshape(img.shape[0], *img.shape[-2:])


def leak_study(students: dict, n: int = 120, size: int = 128, seed: int = SEED) -> dict:
    """Where region and colour-range edits land, on the test photos (training wording).

    Items: :class:`course_lib.world.RetouchWorld` test crops whose instruction names one edit of a
    colour-range (``hsl_*``) or content-region (``region_*``) family. Per item the change
    ``|out - source|`` (mean over channels) is averaged inside the target's mask (weights ``m``) and
    outside (``1 - m``); the leak is ``sum(outside) / sum(inside)`` over the items. PSNR against the
    exact target.

    Args:
        students: name -> student.

    Returns:
        dict ``students`` (name -> ``leak``, ``psnr``, ``n``), ``target_leak`` (the ground truth's
        own leak: the edits are soft-masked), ``n``, ``size``, ``seed``.
    """
    fams = [f.name for f in world.WORLD_FAMILIES if f.name.startswith(("hsl_", "region_"))]
    ds = world.RetouchWorld(split="test", wording="train", size=size, length=4 * n, seed=seed, p2=0.0, p3=0.0,
                            families=fams)
    items = []
    for i in range(len(ds)):
        it = ds[i]
        edits = world.decode_world_edits(it["edits"])
        if len(edits) == 1 and edits[0].target:
            items.append((it, edits[0]))
        if len(items) == n:
            break
    src = torch.stack([it["source"] for it, _ in items])
    tgt = torch.stack([it["target"] for it, _ in items])
    masks = torch.stack([region_mask(it["source"][None], e.family, e.target)[0] for it, e in items])  # (n, H, W)

    def leak(out: torch.Tensor) -> float:
        d = (out - src).abs().mean(1)  # (n, H, W)
        inside = (d * masks).sum((1, 2)) / masks.sum((1, 2)).clamp_min(1e-6)
        outside = (d * (1 - masks)).sum((1, 2)) / (1 - masks).sum((1, 2)).clamp_min(1e-6)
        return float(outside.sum() / inside.sum().clamp_min(1e-9))

    res = {}
    for name, model in students.items():
        with torch.no_grad():
            outs = torch.cat([model(src[k:k + 16], model.embed([it["instruction"] for it, _ in items[k:k + 16]]))
                              .clamp(0, 1) for k in range(0, len(items), 16)])
        mse = (outs - tgt).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        res[name] = {"leak": leak(outs), "psnr": float((10 * torch.log10(1 / mse)).mean()), "n": len(items)}
    return {"students": res, "target_leak": leak(tgt), "n": len(items), "size": size, "seed": seed}


def reading_ms(model, texts: Sequence[str] = ("make the heavens a smidge toastier", "give it a frosty look",
                                               "lift the shadows and make the sky warmer")) -> float:
    """Median milliseconds to read one instruction never read before (sentence and word embeddings
    computed, not cached; the encoder already loaded): once per request, whatever the photo's size."""
    enc = MiniLMEncoder()
    enc._model = shared_encoder(model.cfg.text_encoder).model  # the loaded weights, an empty cache
    times = []
    for t in texts:
        enc._cache.clear()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.understand(featurise([t], model.cfg, encode=enc.encode))
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.eval.reader",
                                description="Score how students read instructions per wording kind (grammar, held-out "
                                            "phrasings and synonyms, hand-written everyday instructions, non-edits) "
                                            "and where their region edits land; one results file.")
    p.add_argument("--student", action="append", default=[], metavar="NAME=PATH",
                   help="a student to score (repeatable; PATH 'shipped' for the shipped checkpoint)")
    p.add_argument("--n", type=int, default=config.pick(fast=60, full=1000), help="instructions per wording")
    p.add_argument("--leak-items", type=int, default=config.pick(fast=8, full=120), help="items of the leak study "
                                                                                          "(0: skip it)")
    p.add_argument("--latency", action="store_true", help="also time each student per 1080p photo, side by side, "
                                                          "and reading a new instruction")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default=str(config.OUTPUT_DIR / "reader" / "reader.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    students = {}
    for spec in a.student or ["shipped=shipped"]:
        name, _, path = spec.partition("=")
        students[name] = load_student(None if path in ("", "shipped") else path)
    t0 = time.perf_counter()
    result = {"readers": {k: reader_report(m, a.n, seed=a.seed) for k, m in students.items()},
              "students": {spec.partition("=")[0]: spec.partition("=")[2] for spec in a.student or ["shipped=shipped"]}}
    if a.leak_items:
        result["leak"] = leak_study(students, a.leak_items, seed=a.seed)
    if a.latency:
        result["ms_1080p"] = latencies(students)
        result["ms_read"] = {k: reading_ms(m) for k, m in students.items()}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["command"] = ("python -m course_lib.eval.reader " + " ".join(f"--student {s}" for s in a.student)
                         + f" --n {a.n} --leak-items {a.leak_items}" + (" --latency" if a.latency else "")
                         + f" --seed {a.seed} --out {a.out}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
