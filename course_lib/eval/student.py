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

Scores (:mod:`course_lib.eval.score`; formulas in :mod:`course_lib.metrics`): PSNR (dB) and mean
CIEDE2000 against the target, instruction accuracy (%), content drift (8-bit levels) and wall
time per 1080p image on this machine. Results go to ``OUTPUT_DIR/evaluate/results.{csv,md}``
(an existing file is replaced only with ``--overwrite``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import config
from ..data import decode_edits
from ..metrics import apply_affine, fit_global_affine, latency_ms
from ..student import CheckpointError, load_student
from . import score as S, tables, world as world_eval
from .heldout import SEED, heldout_batch

METHODS = ("identity", "global affine (oracle)", "global affine (learned)", "student (grid mean)", "student")
#: The shipped learned global-affine baseline.
GLOBAL_BASELINE = config.WEIGHTS_DIR / "student_global_affine.safetensors"
#: The scores of the student tables, and the columns of ``results.csv``.
KEYS = ("psnr", "de00", "accuracy", "drift")
COLUMNS = ("method", *KEYS, "ms_1080p")


def _grid_mean_affine(model, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The student's grid averaged over its cells: (B, 3, 4)."""
    grid = model.predict_grid(image, text)  # (B, 12, D, G, G)
    return grid.mean(dim=(2, 3, 4)).reshape(-1, 3, 4)


def load_baseline(path: str | Path | None = None, device: str | torch.device | None = "cpu"):
    """The learned global-affine baseline (a :class:`Student` with ``global_affine=True``), or ``None``
    when its checkpoint is missing (the evaluation then says so and skips the row)."""
    p = Path(path) if path else GLOBAL_BASELINE
    if not p.is_file():
        print(f"evaluate: no global-affine baseline at {p}; its row is skipped "
              f"(train it with 'python -m course_lib train-student --global-affine --out {p}')", file=sys.stderr)
        return None
    model = load_student(p, device=device)
    if not model.cfg.global_affine:
        raise ValueError(f"{p} is not a global-affine checkpoint")
    return model


def student_method(model) -> S.Method:
    """The full student as a method: ``model(source, embed(instructions))``, clamped, on the CPU.

    The output is clamped in place when no gradient needs it: at 1080p a second 25 MB buffer for a
    copy costs more than the clamp itself (a fresh large allocation is faulted in page by page).
    """
    def run(s, i, t):
        out = model(s.to(model.device), model.embed(i))  # (B, 3, H, W), a fresh tensor
        return (out.clamp(0, 1) if out.requires_grad else out.clamp_(0, 1)).cpu()
    return run


def methods(model, baseline=None) -> dict[str, S.Method]:
    """The methods of :data:`METHODS` that can run (``model``/``baseline`` ``None``: their rows left out)."""
    fns: dict[str, S.Method] = {"identity": lambda s, i, t: s,
                                "global affine (oracle)": lambda s, i, t: apply_affine(fit_global_affine(s, t), s)}
    if baseline is not None:
        fns["global affine (learned)"] = student_method(baseline)
    if model is not None:
        def grid_mean(s, i, t):
            x = s.to(model.device)
            return apply_affine(_grid_mean_affine(model, x, model.embed(i)), x).cpu()
        fns["student (grid mean)"] = grid_mean
        fns["student"] = student_method(model)
    return {name: fns[name] for name in METHODS if name in fns}


def run_methods(model, batch: dict, batch_size: int = 16, baseline=None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image scores of every method: method -> key (:data:`KEYS`) -> (N,) tensor.

    ``batch``: a held-out batch (:func:`course_lib.eval.heldout.heldout_batch`); ``baseline``: the
    learned global-affine model (see :func:`load_baseline`), optional."""
    return {name: S.run(fn, batch, batch_size, KEYS)["items"] for name, fn in methods(model, baseline).items()}


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


def evaluate(model=None, n: int | None = None, size: int | None = None, batch_size: int = 16, seed: int = SEED,
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
        dict with ``rows`` (one dict per method: method, psnr (dB), de00, accuracy (%), drift,
        ms_1080p), ``per_family`` (family -> {method: mean PSNR} over single-edit items), ``n``, ``size``.
    """
    if model is None:
        model = load_student(device=config.device())
    n = n or config.pick(fast=24, full=270)
    size = size or config.pick(fast=128, full=256)
    if isinstance(baseline, str):
        baseline = load_baseline(None if baseline == "shipped" else baseline, device=model.device)
    batch = heldout_batch(n, size, seed, paraphrases)
    scores = run_methods(model, batch, batch_size, baseline=baseline)
    rows = [{"method": name, **S.summarise(s),
             "ms_1080p": method_latency(model, name, baseline=baseline) if latency else float("nan")}
            for name, s in scores.items()]
    per_family: dict[str, dict[str, float]] = {}
    families = [decode_edits(e) for e in batch["edits"]]
    singles = [i for i, f in enumerate(families) if len(f) == 1]
    for i in singles:  # families in order of first appearance
        per_family.setdefault(families[i][0].family, {})
    for fam in sorted(per_family):
        idx = torch.tensor([i for i in singles if families[i][0].family == fam])
        per_family[fam] = {name: float(scores[name]["psnr"][idx].clamp(max=99).mean()) for name in scores}
        per_family[fam]["count"] = len(idx)
    return {"rows": rows, "per_family": per_family, "n": n, "size": size, "paraphrases": paraphrases}


def compare_students(models: dict, n: int | None = None, size: int | None = None, seed: int = SEED,
                     paraphrases: str = "heldout", batch_size: int = 16) -> list[dict]:
    """Score several students on the same held-out items (an ablation table).

    Args:
        models: display name -> :class:`course_lib.student.Student`.
        n, size, seed, paraphrases: as in :func:`evaluate`.

    Returns:
        rows ``{"method", "psnr", "de00", "accuracy" (%), "drift"}``: ``identity`` first, then one per model.
    """
    n = n or config.pick(fast=24, full=270)
    size = size or config.pick(fast=128, full=256)
    batch = heldout_batch(n, size, seed, paraphrases)
    rows = [{"method": "identity", **S.run(lambda s, i, t: s, batch, batch_size, KEYS)["scores"]}] if models else []
    rows += [{"method": name, **S.run(student_method(model), batch, batch_size, KEYS)["scores"]}
             for name, model in models.items()]
    return rows


def rows_markdown(rows: list[dict]) -> str:
    """Rows of :func:`compare_students` as a Markdown table."""
    return tables.markdown(rows, ("method", *KEYS))


def table_markdown(result: dict) -> str:
    """The main table and the per-family PSNR table as Markdown."""
    title = (f"Held-out photos x {result.get('paraphrases', 'heldout').replace('heldout', 'held-out')} paraphrases: "
             f"{result['n']} items at {result['size']}x{result['size']}.")
    text = tables.markdown(result["rows"], COLUMNS, title=title)
    if result["per_family"]:
        methods_ = [m for m in METHODS if m in next(iter(result["per_family"].values()))]
        fam_rows = [{"family": fam, "n": v["count"], **{m: v[m] for m in methods_}}
                    for fam, v in result["per_family"].items()]
        text += "\n\n" + tables.markdown(fam_rows, ["family", "n", *methods_],
                                           title="PSNR (dB) by edit family, single-edit items:")
    return text


def output_paths(out_dir: str | Path | None = None) -> list[Path]:
    """Where :func:`write_results` writes: ``results.csv`` and ``results.md``."""
    out = Path(out_dir) if out_dir else config.OUTPUT_DIR / "evaluate"
    return [out / "results.csv", out / "results.md"]


def write_results(result: dict, out_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``results.csv`` and ``results.md`` (atomically; existing ones only with ``overwrite``); return the folder."""
    csv_path, md_path = output_paths(out_dir)
    tables.write({csv_path: tables.csv_text(result["rows"], COLUMNS), md_path: table_markdown(result) + "\n"},
                 overwrite=overwrite)
    return csv_path.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib evaluate",
                                description="Evaluate identity, the global-affine oracle, the learned global-affine baseline and "
                                            "the student on held-out "
                                            "photos x held-out paraphrases; print a table and write CSV/Markdown "
                                            "under OUTPUT_DIR/evaluate.")
    p.add_argument("--data", choices=["world", "pairs"], default="world",
                   help="the data world 2.0's test photos in three wordings, global vs content-aware edits "
                        "(default), or the first world's held-out pairs")
    p.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped one)")
    p.add_argument("--baseline", default="shipped",
                   help="learned global-affine checkpoint (default: the shipped one; 'none' to skip)")
    p.add_argument("-n", "--items", type=int, default=None,
                   help="evaluation items (pairs: default 24 FAST, 270 FULL; world: per wording, 24 / 240)")
    p.add_argument("--size", type=int, default=None, help="image side (pairs: default 128 / 256; world: 96 / 192)")
    p.add_argument("--no-grid-oracle", action="store_true", help="world: skip the BGU grid oracle row")
    p.add_argument("--latency-against", default=None, metavar="CKPT",
                   help="world: also time the student and this other student checkpoint at 1080p, side by side")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--paraphrases", choices=["heldout", "train"], default="heldout",
                   help="instruction phrasings: held out from training (default) or the training ones")
    p.add_argument("--no-latency", action="store_true", help="skip the 1080p timings")
    p.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/evaluate)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results.csv / results.md")
    a = p.parse_args(argv)
    if a.data == "world":
        return main_world(a)
    loaded = _load_models(a, output_paths(a.out))
    if loaded is None:
        return 2
    model, baseline = loaded
    result = evaluate(model, a.items, a.size, seed=a.seed, latency=not a.no_latency, paraphrases=a.paraphrases,
                      baseline=baseline)
    print(table_markdown(result))
    try:
        out = write_results(result, a.out, overwrite=a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {out}/results.csv and results.md")
    return 0


def _load_models(a: argparse.Namespace, outputs: list[Path]):
    """Check the outputs are free, load the student and the baseline: ``(model, baseline)``, or
    ``None`` after one ``error:`` line."""
    try:
        tables.check_free(outputs, a.overwrite)
        model = load_student(a.checkpoint, device=config.device())
        baseline = None if a.baseline == "none" else load_baseline(None if a.baseline == "shipped" else a.baseline,
                                                                  device=model.device)
    except (CheckpointError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return model, baseline


def world_paths(out_dir: str | Path | None = None) -> list[Path]:
    """Where ``evaluate --data world`` writes: ``world.json`` and ``world.md``."""
    out = Path(out_dir) if out_dir else config.OUTPUT_DIR / "evaluate"
    return [out / "world.json", out / "world.md"]


def main_world(a: argparse.Namespace) -> int:
    """``evaluate --data world``: :func:`course_lib.eval.world.evaluate_world`, printed and written."""
    loaded = _load_models(a, world_paths(a.out))
    if loaded is None:
        return 2
    model, baseline = loaded
    other = None
    if a.latency_against and not a.no_latency:
        try:  # checked before the evaluation, so a wrong path costs nothing
            other = load_student(a.latency_against, device=model.device)
        except CheckpointError as exc:
            print(f"error: --latency-against: {exc}", file=sys.stderr)
            return 2
    result = world_eval.evaluate_world(model, baseline, a.items, a.size, seed=a.seed, grid_oracle=not a.no_grid_oracle)
    result["checkpoint"] = str(a.checkpoint or "shipped")
    result["baseline_checkpoint"] = str(a.baseline or "shipped")
    result["command"] = tables.command_line("evaluate", a, skip=("out", "overwrite"))
    if not a.no_latency:
        timed = {"student": model, **({"global affine (learned)": baseline} if baseline is not None else {})}
        if other is not None:
            timed["other"] = other
        result["ms_1080p"] = world_eval.latencies(timed)
        result["latency_against"] = a.latency_against
    text = world_eval.markdown(result)
    print(text)
    js, md = world_paths(a.out)
    try:
        tables.write({js: tables.json_text(result, indent=1) + "\n", md: text + "\n"}, overwrite=a.overwrite)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {js} and {md.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
