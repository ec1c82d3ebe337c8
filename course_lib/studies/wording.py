"""``python -m course_lib wording-study``: what helps the student read wording it never saw.

The text pathway (the adapter MLP on the frozen sentence embedding, and the "understood as"
heads) can be trained alone on a featurised bank of training instructions
(:func:`course_lib.train.student.pretrain_text`), so each change to it can be measured alone in
seconds instead of one training run each. Every variant below changes **one** thing of the
reference recipe (the last two combine the helpful changes; the very last reads the instruction
clause by clause, :func:`course_lib.student.split_clauses`) and is scored on fresh instructions in
the three wordings (training grammar, held-out whole phrasings, held-out synonyms):

- ``family + direction``: % of named edits read with the right family and sign;
- ``understood``: % of instructions whose read set of (label, sign) is exactly the named one;
- ``refused``: % of real instructions read as nothing.

Presence threshold 0.5 for every variant (the shipped student's is calibrated on validation
data at the end of its training). Deterministic given ``--seed``; writes
``OUTPUT_DIR/wording/wording_study.json`` (``--out``), which lesson 03 and the README render.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import config, grammar, world
from ..grammar import training_vocabulary
from ..student import Student, StudentConfig, featurise
from ..train.student import TrainArgs, pretrain_text, text_bank
from ..eval.reader import wording_set
from ..eval.world import score_reads

#: The reference recipe (the shipped student's stage 0) and the one-change variants.
VARIANTS: dict[str, dict] = {
    "reference": {},
    "no word indicators (embedding only)": {"vocab": False},
    "no word dropout": {"word_dropout": 0.0},
    "word dropout 0.6": {"word_dropout": 0.6},
    "two adapter layers": {"text_layers": 2},
    "adapter width 256": {"film_hidden": 256},
    "4x the steps": {"steps_factor": 4},
    "width 256 + 4x steps + no word dropout": {"film_hidden": 256, "steps_factor": 4, "word_dropout": 0.0},
    "the same + read clause by clause": {"film_hidden": 256, "steps_factor": 4, "word_dropout": 0.0, "clauses": 4},
}
#: The variant the shipped student's reader uses (``train-student --reader-only``, :data:`READER_RECIPE`).
SHIPPED_READER = "the same + read clause by clause"


@dataclasses.dataclass
class StudyArgs:
    bank: int = 20000
    test: int = 1000
    steps: int = 6000
    lr: float = 1e-3
    word_dropout: float = 0.3
    seed: int = 0


def score_readout(model: Student, X: torch.Tensor, edits: list[str], threshold: float = 0.5) -> dict[str, float]:
    """``family_direction``, ``understood``, ``refused`` (%) of featurised instructions ``X``."""
    with torch.no_grad():
        logits, strength = model.understand(X)
    on = torch.sigmoid(logits) >= threshold  # (N, K)
    reads = [{(model.cfg.readout[k], bool(strength[b, k] > 0)) for k in torch.nonzero(on[b]).flatten().tolist()}
             for b in range(len(edits))]
    return score_reads(reads, edits)


def run_variant(name: str, change: dict, bank: dict, evals: dict, args: StudyArgs) -> dict:
    """Train one variant's text pathway on the bank and score it on the three wordings."""
    vocab = change.get("vocab", True)
    full_cfg = bank["cfg"]
    cfg = dataclasses.replace(full_cfg, text_layers=change.get("text_layers", 1),
                              film_hidden=change.get("film_hidden", 128),
                              vocab=full_cfg.vocab if vocab else ())
    if cfg.clauses > 1 and not vocab:
        raise ValueError("the clause variants keep the word indicators")
    cut = (lambda X: X) if vocab else (lambda X: X[:, :cfg.text_dim])
    torch.manual_seed(args.seed)
    model = Student(cfg)
    targs = TrainArgs(lr=args.lr, seed=args.seed, word_dropout=change.get("word_dropout", args.word_dropout),
                      text_pretrain_steps=args.steps * change.get("steps_factor", 1))
    t0 = time.perf_counter()
    losses = pretrain_text(model, targs, bank={"X": cut(bank["X"]), "P": bank["P"], "S": bank["S"]})
    seconds = time.perf_counter() - t0
    model.eval()
    scores = {w: score_readout(model, cut(X), e) for w, (X, e) in evals.items()}
    # the same, for instructions naming one edit and naming several (where a bag of words cannot bind)
    by_count = {}
    for w, (X, e) in evals.items():
        for kind, keep in (("one edit", lambda k: k == 1), ("several edits", lambda k: k > 1)):
            idx = [i for i, x in enumerate(e) if keep(len(x.split(";")))]
            by_count.setdefault(w, {})[kind] = score_readout(model, cut(X[idx]), [e[i] for i in idx]) if idx else {}
    return {"variant": name, "change": change, "steps": targs.text_pretrain_steps, "seconds": round(seconds, 1),
            "final_loss": float(np.mean(losses[-200:])), "scores": scores, "by_count": by_count}


def featurised(args: StudyArgs, clauses: int = 1) -> tuple[dict, dict]:
    """The training bank and the test instructions of every wording, featurised for a reader of
    ``clauses`` clauses: ``(bank, evals)`` with ``evals[wording] = (X, edits)``."""
    cfg = StudentConfig(net_size=32, grid_size=8, channels=8, fc=(8,), readout=world.READOUT_LABELS,
                        vocab=tuple(sorted(training_vocabulary())), clauses=clauses,
                        film_reads="code" if clauses > 1 else "text")
    bank = text_bank(args.bank, args.seed, cfg)
    bank["cfg"] = cfg
    evals = {}
    for w in grammar.WORDINGS_KINDS:
        texts, edits = wording_set(args.test, w, args.seed, salt=60_000)
        evals[w] = (torch.cat([featurise(texts[k:k + 256], cfg) for k in range(0, len(texts), 256)]), edits)
    return bank, evals


def study(args: StudyArgs, variants: dict[str, dict] | None = None) -> dict:
    """Featurise the bank and the test instructions once per clause count, then train and score every variant."""
    cache: dict[int, tuple[dict, dict]] = {}
    rows = []
    for name, change in config.progress(list((variants or VARIANTS).items()), desc="wording study",
                                        disable=config.is_fast()):
        L = change.get("clauses", 1)
        if L not in cache:
            cache[L] = featurised(args, L)
        rows.append(run_variant(name, change, *cache[L], args))
    return {"rows": rows, "args": dataclasses.asdict(args), "threshold": 0.5,
            "wordings": list(grammar.WORDINGS_KINDS)}


def markdown(result: dict) -> str:
    """The study as a Markdown table: family + direction and exact reads per wording, exact reads
    of training-wording instructions naming one edit / several edits, and the held-out phrasing /
    training ratio of exact reads."""
    ws = result["wordings"]
    head = ("| variant | " + " | ".join(f"{w}: fam+dir / exact (%)" for w in ws)
            + " | train, exact: one edit / several (%) | held-out phrasing / train (exact) |\n|---|"
            + "---:|" * (len(ws) + 2))
    lines = [head]
    for r in result["rows"]:
        s = r["scores"]
        ratio = s["heldout_phrasing"]["understood"] / max(s["train"]["understood"], 1e-9)
        cells = " | ".join(f"{s[w]['family_direction']:.0f} / {s[w]['understood']:.0f}" for w in ws)
        bc = r.get("by_count", {}).get("train", {})
        split = " / ".join(f"{bc[k]['understood']:.0f}" if bc.get(k) else "-" for k in ("one edit", "several edits"))
        lines.append(f"| {r['variant']} | {cells} | {split or '-'} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = StudyArgs()
    p = argparse.ArgumentParser(prog="python -m course_lib wording-study",
                                description="Train the student's text pathway alone in several variants (one change "
                                            "each) and score how it reads training wording, held-out phrasings and "
                                            "held-out synonyms.")
    p.add_argument("--bank", type=int, default=config.pick(fast=600, full=d.bank), help="training instructions")
    p.add_argument("--test", type=int, default=config.pick(fast=100, full=d.test), help="test instructions per wording")
    p.add_argument("--steps", type=int, default=config.pick(fast=60, full=d.steps), help="steps of the reference")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    p.add_argument("--out", default=str(config.OUTPUT_DIR / "wording" / "wording_study.json"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        print(f"wording-study: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    chosen = VARIANTS
    if a.variants:
        names = [v.strip() for v in a.variants.split(",")]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            print(f"wording-study: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
            return 2
        chosen = {v: VARIANTS[v] for v in names}
    torch.set_num_threads(1)
    result = study(StudyArgs(bank=a.bank, test=a.test, steps=a.steps, seed=a.seed), chosen)
    result["command"] = (f"python -m course_lib wording-study --bank {a.bank} --test {a.test} --steps {a.steps} "
                         f"--seed {a.seed}" + (f' --variants "{a.variants}"' if a.variants else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
