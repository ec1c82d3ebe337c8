"""``python -m course_lib evaluate``: the student against baselines on the test photos.

Items are :func:`course_lib.eval.world.world_batch` crops of the **test photos** (never seen in
training) in three wordings (training grammar, held-out phrasings, held-out synonyms); the table
is :func:`course_lib.eval.world.evaluate_world` (identity, the global-affine and grid oracles, the
learned global-affine baseline, the student), split by kind of edit. The learned global-affine
baseline is the same network and recipe with the grid collapsed to one 3x4 transform per photo
(``train-student --global-affine``, shipped as ``data/weights/student_global_affine.safetensors``).
Results go to ``OUTPUT_DIR/evaluate/world.{json,md}`` (an existing file is replaced only with
``--overwrite``). :func:`compare_students` scores several students on the same test items.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import config
from ..student import CheckpointError, Student, load_student, retouch
from . import score as S, tables, world as world_eval
from .heldout import SEED, heldout_batch

#: The shipped learned global-affine baseline.
GLOBAL_BASELINE = config.WEIGHTS_DIR / "student_global_affine.safetensors"
#: The scores of :func:`compare_students`.
KEYS = ("psnr", "de00", "accuracy", "drift")


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

    Without gradients a :class:`Student` runs through :func:`course_lib.student.retouch`, as the
    ``retouch`` command runs it: the clamp happens inside the one pass over the pixels, not in a second
    pass over a 25 MB result at 1080p. Otherwise the output is clamped in place when no gradient needs
    it (a copy would be a second large buffer, faulted in page by page).
    """
    def run(s, i, t):
        if isinstance(model, Student) and not torch.is_grad_enabled():
            return retouch(model, s, list(i))  # (B, 3, H, W) in [0, 1]
        out = model(s.to(model.device), model.embed(i))  # (B, 3, H, W), a fresh tensor
        return (out.clamp(0, 1) if out.requires_grad else out.clamp_(0, 1)).cpu()
    return run


def compare_students(models: dict, n: int | None = None, size: int | None = None, seed: int = SEED,
                     wording: str = "heldout_phrasing", batch_size: int = 16) -> list[dict]:
    """Score several students on the same test items (an ablation table).

    Args:
        models: display name -> :class:`course_lib.student.Student`.
        n: items (default 24 FAST / 270 FULL). size: image side (default 128 / 256).
        seed: evaluation-set seed. wording: any of :data:`course_lib.grammar.WORDINGS_KINDS`.

    Returns:
        rows ``{"method", "psnr", "de00", "accuracy" (%), "drift"}``: ``identity`` first, then one per model.
    """
    n = n or config.pick(fast=24, full=270)
    size = size or config.pick(fast=128, full=256)
    batch = heldout_batch(n, size, seed, wording)
    rows = [{"method": "identity", **S.run(lambda s, i, t: s, batch, batch_size, KEYS)["scores"]}] if models else []
    rows += [{"method": name, **S.run(student_method(model), batch, batch_size, KEYS)["scores"]}
             for name, model in models.items()]
    return rows


def rows_markdown(rows: list[dict]) -> str:
    """Rows of :func:`compare_students` as a Markdown table."""
    return tables.markdown(rows, ("method", *KEYS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib evaluate",
                                description="Evaluate identity, the global-affine and grid oracles, the learned "
                                            "global-affine baseline and the student on the test photos in three "
                                            "wordings, global vs content-aware edits; print a table and write "
                                            "JSON/Markdown under OUTPUT_DIR/evaluate.")
    p.add_argument("--checkpoint", default=None, help="student checkpoint (default: the shipped one)")
    p.add_argument("--baseline", default="shipped",
                   help="learned global-affine checkpoint (default: the shipped one; 'none' to skip)")
    p.add_argument("-n", "--items", type=int, default=None, help="evaluation items per wording (default 24 FAST, 240 FULL)")
    p.add_argument("--size", type=int, default=None, help="image side (default 96 FAST, 192 FULL)")
    p.add_argument("--no-grid-oracle", action="store_true", help="skip the BGU grid oracle row")
    p.add_argument("--latency-against", default=None, metavar="CKPT",
                   help="also time the student and this other student checkpoint at 1080p, side by side")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--no-latency", action="store_true", help="skip the 1080p timings")
    p.add_argument("--out", default=None, help="output folder (default OUTPUT_DIR/evaluate)")
    p.add_argument("--overwrite", action="store_true", help="replace existing world.json / world.md")
    return main_world(p.parse_args(argv))


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
    """Where ``evaluate`` writes: ``world.json`` and ``world.md``."""
    out = Path(out_dir) if out_dir else config.OUTPUT_DIR / "evaluate"
    return [out / "world.json", out / "world.md"]


def main_world(a: argparse.Namespace) -> int:
    """``evaluate``: :func:`course_lib.eval.world.evaluate_world`, printed and written."""
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
