"""``python -m course_lib evaluate``: the student against baselines on held-out data.

The evaluation set is :class:`course_lib.data.RetouchPairs` on the **held-out photos**
with the **held-out paraphrases** (so neither the images nor the wording were seen in
training); ``--paraphrases train`` keeps the training phrasings, to separate
generalisation to new photos from generalisation to new wording. Methods:

* ``identity`` - return the source (the floor).
* ``global affine (oracle)`` - the best single 3x4 colour transform fitted by least
  squares *to the ground-truth target*. It sees the answer, so it is an upper bound for
  any global colour transform, not a competitor that reads the instruction.
* ``global affine (learned)`` - **the baseline**: the same network and training recipe with
  the grid collapsed to one 3x4 transform per photo (``train-student --global-affine``,
  shipped as ``data/weights/student_global_affine.safetensors``). It reads the instruction
  and sees the photo like the student; only the spatial and luma bins are missing.
* ``student (grid mean)`` - the student's predicted grid averaged into one 3x4 transform
  and applied globally (what the student's grid amounts to without slicing).
* ``student`` - the full student: spatial x luma grid, learned guide.

Metrics (see :mod:`course_lib.metrics`): PSNR and mean CIEDE2000 against the target,
instruction accuracy, content drift (8-bit levels) and wall time per 1080p image on
this machine. Results go to ``OUTPUT_DIR/evaluate/results.{csv,md}``.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch

from . import config
from .data import RetouchPairs, decode_edits
from .metrics import (apply_affine, content_drift, fit_global_affine, instruction_accuracy, latency_ms,
                      mean_delta_e00, psnr)

METHODS = ("identity", "global affine (oracle)", "global affine (learned)", "student (grid mean)", "student")
#: The shipped learned global-affine baseline.
GLOBAL_BASELINE = config.WEIGHTS_DIR / "student_global_affine.safetensors"


def eval_items(n: int, size: int, seed: int = 1234, paraphrases: str = "heldout") -> list[dict]:
    """``n`` held-out-photo items of side ``size`` with ``"heldout"`` (default) or ``"train"`` paraphrases."""
    ds = RetouchPairs(split="heldout", paraphrases=paraphrases, size=size, length=n, seed=seed)
    return [ds[i] for i in range(n)]


def _grid_mean_affine(model, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The student's grid averaged over its cells: (B, 3, 4)."""
    grid = model.predict_grid(image, text)  # (B, 12, D, G, G)
    return grid.mean(dim=(2, 3, 4)).reshape(-1, 3, 4)


def load_baseline(path: str | Path | None = None, device: str | torch.device | None = "cpu"):
    """The learned global-affine baseline (a :class:`Student` with ``global_affine=True``), or ``None``
    when its checkpoint is missing (the evaluation then says so and skips the row)."""
    from .student import load_student

    p = Path(path) if path else GLOBAL_BASELINE
    if not p.is_file():
        print(f"evaluate: no global-affine baseline at {p}; its row is skipped "
              f"(train it with 'python -m course_lib train-student --global-affine --out {p}')", file=sys.stderr)
        return None
    model = load_student(p, device=device)
    if not model.cfg.global_affine:
        raise ValueError(f"{p} is not a global-affine checkpoint")
    return model


def run_methods(model, items: list[dict], batch_size: int = 16, baseline=None) -> dict[str, dict[str, torch.Tensor]]:
    """Outputs of every method, scored: method -> metric name -> (N,) tensor.

    ``baseline``: the learned global-affine model (see :func:`load_baseline`), optional."""
    scores: dict[str, dict[str, list[torch.Tensor]]] = {m: {} for m in METHODS}
    dev = model.device if model is not None else torch.device("cpu")
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        src = torch.stack([it["source"] for it in chunk])  # (B, 3, S, S)
        tgt = torch.stack([it["target"] for it in chunk])
        edits = [it["edits"] for it in chunk]
        outs: dict[str, torch.Tensor] = {"identity": src,
                                          "global affine (oracle)": apply_affine(fit_global_affine(src, tgt), src)}
        if model is not None:
            with torch.no_grad():
                text = model.embed([it["instruction"] for it in chunk])
                x = src.to(dev)
                outs["student"] = model(x, text).clamp(0, 1).cpu()
                outs["student (grid mean)"] = apply_affine(_grid_mean_affine(model, x, text), x).cpu()
        if baseline is not None:
            with torch.no_grad():
                text_b = baseline.embed([it["instruction"] for it in chunk])
                outs["global affine (learned)"] = baseline(src.to(baseline.device), text_b).clamp(0, 1).cpu()
        for name, out in outs.items():
            s = scores[name]
            s.setdefault("psnr", []).append(psnr(out, tgt))
            s.setdefault("de00", []).append(mean_delta_e00(out, tgt))
            s.setdefault("acc", []).append(instruction_accuracy(out, src, tgt, edits).float())
            s.setdefault("drift", []).append(content_drift(out, src))
    return {m: {k: torch.cat(v) for k, v in s.items()} for m, s in scores.items() if s}


def method_latency(model, name: str, repeats: int = 3, baseline=None) -> float:
    """Milliseconds per 1080p image (``nan`` for the identity, which does nothing)."""
    if name == "identity":
        return float("nan")
    if name == "global affine (oracle)":
        A = torch.eye(3, 4)[None]
        return latency_ms(lambda im: apply_affine(A, im), repeats=repeats)
    if name == "global affine (learned)":
        model = baseline
    text = model.embed(["make it warmer"])  # embedding cached: not timed
    dev = model.device
    if name == "student (grid mean)":
        return latency_ms(lambda im: apply_affine(_grid_mean_affine(model, im, text), im), repeats=repeats, device=dev)
    return latency_ms(lambda im: model(im, text).clamp(0, 1), repeats=repeats, device=dev)


def summarise(s: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-item scores of one method (see :func:`run_methods`) -> mean PSNR over finite values,
    mean ΔE00, accuracy (fraction) and drift."""
    finite = s["psnr"][torch.isfinite(s["psnr"])]
    return {"psnr": float(finite.mean()) if len(finite) else math.inf, "de00": float(s["de00"].mean()),
            "accuracy": float(s["acc"].mean()), "drift": float(s["drift"].mean())}


def evaluate(model=None, n: int | None = None, size: int | None = None, batch_size: int = 16, seed: int = 1234,
             latency: bool = True, paraphrases: str = "heldout", baseline: object = "shipped") -> dict:
    """Score every method on held-out photos x held-out paraphrases.

    Args:
        model: a :class:`course_lib.student.Student` (default: the shipped checkpoint).
        n: number of items (default 24 FAST / 270 FULL). size: image side (default 128 / 256).
        batch_size: items per forward pass. seed: evaluation-set seed.
        latency: also time each method on a 1080p image.
        paraphrases: ``"heldout"`` (the test of language generalisation) or ``"train"`` (held-out
            photos only: the test of generalisation to new images).
        baseline: the learned global-affine model; ``"shipped"`` loads the shipped checkpoint
            (skipped with a notice when missing), ``None`` leaves the row out.

    Returns:
        dict with ``rows`` (one dict per method: method, psnr, de00, accuracy, drift, ms_1080p),
        ``per_family`` (family -> {method: mean PSNR} over single-edit items), ``n``, ``size``.
    """
    from .student import load_student

    if model is None:
        model = load_student(device=config.device())
    n = n or config.pick(fast=24, full=270)
    size = size or config.pick(fast=128, full=256)
    if isinstance(baseline, str):
        baseline = load_baseline(None if baseline == "shipped" else baseline, device=model.device)
    items = eval_items(n, size, seed, paraphrases)
    scores = run_methods(model, items, batch_size, baseline=baseline)
    rows = []
    for name in METHODS:
        if name not in scores:
            continue
        rows.append({"method": name, **summarise(scores[name]),
                     "ms_1080p": method_latency(model, name, baseline=baseline) if latency else float("nan")})
    per_family: dict[str, dict[str, float]] = {}
    singles = [i for i, it in enumerate(items) if len(decode_edits(it["edits"])) == 1]
    for i in singles:
        fam = decode_edits(items[i]["edits"])[0].family
        per_family.setdefault(fam, {})
    for fam in sorted(per_family):
        idx = torch.tensor([i for i in singles if decode_edits(items[i]["edits"])[0].family == fam])
        per_family[fam] = {name: float(scores[name]["psnr"][idx].clamp(max=99).mean()) for name in scores}
        per_family[fam]["count"] = len(idx)
    return {"rows": rows, "per_family": per_family, "n": n, "size": size, "paraphrases": paraphrases}


def compare_students(models: dict, n: int | None = None, size: int | None = None, seed: int = 1234,
                     paraphrases: str = "heldout", batch_size: int = 16) -> list[dict]:
    """Score several students on the same held-out items (an ablation table).

    Args:
        models: display name -> :class:`course_lib.student.Student`.
        n, size, seed, paraphrases: as in :func:`evaluate`.

    Returns:
        rows ``{"method", "psnr", "de00", "accuracy", "drift"}``: ``identity`` first, then one per model.
    """
    n = n or config.pick(fast=24, full=270)
    size = size or config.pick(fast=128, full=256)
    items = eval_items(n, size, seed, paraphrases)
    rows = []
    for k, (name, model) in enumerate(models.items()):
        scores = run_methods(model, items, batch_size)
        picks = ([("identity", "identity")] if k == 0 else []) + [(name, "student")]
        rows += [{"method": label, **summarise(scores[key])} for label, key in picks]
    return rows


def rows_markdown(rows: list[dict]) -> str:
    """Rows of :func:`compare_students` as a Markdown table."""
    lines = ["| method | PSNR (dB) ↑ | ΔE00 ↓ | instruction acc. ↑ | drift (8-bit levels) ↓ |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['method']} | {_fmt(r['psnr'])} | {_fmt(r['de00'])} | {r['accuracy'] * 100:.0f} % | "
              f"{_fmt(r['drift'])} |" for r in rows]
    return "\n".join(lines)


def _fmt(v: float, digits: int = 2) -> str:
    return "-" if v != v else ("inf" if math.isinf(v) else f"{v:.{digits}f}")


def table_markdown(result: dict) -> str:
    """The main table and the per-family PSNR table as Markdown."""
    lines = [f"Held-out photos x {result.get('paraphrases', 'heldout').replace('heldout', 'held-out')} paraphrases: "
             f"{result['n']} items at {result['size']}x{result['size']}.", "",
             "| method | PSNR (dB) ↑ | ΔE00 ↓ | instruction acc. ↑ | drift (8-bit levels) ↓ | ms / 1080p |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {_fmt(r['psnr'])} | {_fmt(r['de00'])} | {r['accuracy'] * 100:.0f} % | "
                     f"{_fmt(r['drift'])} | {_fmt(r['ms_1080p'], 1)} |")
    if result["per_family"]:
        methods = [m for m in METHODS if m in next(iter(result["per_family"].values()))]
        lines += ["", "PSNR (dB) by edit family, single-edit items:", "",
                  "| family | n | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]
        for fam, v in result["per_family"].items():
            lines.append(f"| {fam} | {v['count']} | " + " | ".join(_fmt(v[m]) for m in methods) + " |")
    return "\n".join(lines)


def write_results(result: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``results.csv`` and ``results.md`` (replacing earlier ones) and return the folder."""
    out = Path(out_dir) if out_dir else config.OUTPUT_DIR / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "psnr", "de00", "accuracy", "drift", "ms_1080p"])
        w.writeheader()
        w.writerows(result["rows"])
    (out / "results.md").write_text(table_markdown(result) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib evaluate",
                                description="Evaluate identity, the global-affine oracle, the learned global-affine baseline and "
                                            "the student on held-out "
                                            "photos x held-out paraphrases; print a table and write CSV/Markdown "
                                            "under OUTPUT_DIR/evaluate.")
    p.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped one)")
    p.add_argument("--baseline", default="shipped",
                   help="learned global-affine checkpoint (default: the shipped one; 'none' to skip)")
    p.add_argument("-n", "--items", type=int, default=None, help="evaluation items (default 24 FAST, 270 FULL)")
    p.add_argument("--size", type=int, default=None, help="image side (default 128 FAST, 256 FULL)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--paraphrases", choices=["heldout", "train"], default="heldout",
                   help="instruction phrasings: held out from training (default) or the training ones")
    p.add_argument("--no-latency", action="store_true", help="skip the 1080p timings")
    p.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/evaluate)")
    a = p.parse_args(argv)
    from .student import CheckpointError, load_student

    try:
        model = load_student(a.checkpoint, device=config.device())
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        baseline = None if a.baseline == "none" else load_baseline(None if a.baseline == "shipped" else a.baseline,
                                                                  device=model.device)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(model, a.items, a.size, seed=a.seed, latency=not a.no_latency, paraphrases=a.paraphrases,
                      baseline=baseline)
    print(table_markdown(result))
    print(f"\nwrote {write_results(result, a.out)}/results.csv and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
