"""Why the grid is needed, measured: how well three *oracles* can represent each edit family.

Each oracle looks at the ground-truth target and fits the best transform of its kind, so its
PSNR is an upper bound for any model that predicts that kind of transform:

* **global affine** - one 3x4 colour matrix for the whole photo (least squares,
  :func:`course_lib.metrics.fit_global_affine`): what a network that predicts a single colour
  transform could at best do;
* **luma curve** - one 3x4 affine per luma bin, the same everywhere in the frame: a bilateral
  grid with a single spatial cell (:func:`course_lib.bilateral.fit_bgu` with 1x1xD cells), i.e.
  the best per-luma colour curve;
* **grid** - the bilateral grid the student predicts (16 spatial cells on the shorter side x 8
  luma bins), fitted by bilateral guided upsampling (:func:`~course_lib.bilateral.fit_bgu`).

The study runs every family, target and direction (at the ``"normal"`` strength) on the test
photos of :mod:`course_lib.world` and averages PSNR (dB, capped at 60) per family. A hue range or
content region that covers under 2 % of a photo is counted as *absent* and left out (a region
edit is then the identity; an HSL edit of a hue the photo hardly has changes next to nothing). ``python -m course_lib data oracle`` writes the table under ``outputs/oracle/``.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from . import grammar, metrics, world
from .bilateral import fit_bgu, slice_apply
from .config import OUTPUT_DIR, RESULTS_DIR
from .data import luma
from .util.files import atomic_write_text

ORACLES = ("global_affine", "luma_curve", "grid")
#: Targets of the study: new families' grid fit at least this, their global-affine fit at most that (dB).
GRID_TARGET_DB, GLOBAL_TARGET_DB = 38.0, 32.0


def grid_shape(h: int, w: int, spatial_bins: int = 16) -> tuple[int, int]:
    """(Hg, Wg): ``spatial_bins`` cells along the shorter side, the other side keeping the aspect."""
    if h <= w:
        return spatial_bins, max(1, round(spatial_bins * w / h))
    return max(1, round(spatial_bins * h / w)), spatial_bins


def oracle_fits(source: torch.Tensor, target: torch.Tensor, luma_bins: int = 8,
                spatial_bins: int = 16) -> dict[str, torch.Tensor]:
    """The three oracles' best reproductions of ``target`` from ``source``.

    Args:
        source, target: (B, 3, H, W) in [0, 1].

    Returns:
        dict oracle name -> (B, 3, H, W) in [0, 1].
    """
    guide = luma(source)[:, 0].clamp(0, 1)  # (B, H, W)
    A = metrics.fit_global_affine(source, target)  # (B, 3, 4)
    out = {"global_affine": metrics.apply_affine(A, source)}
    with _threads(1):  # splatting into a single cell is slower with several threads fighting over it
        curve = fit_bgu(source, target, guide, luma_bins, 1, 1)  # (B, 12, D, 1, 1)
    out["luma_curve"] = slice_apply(curve, guide, source, impl="grid_sample").clamp(0, 1)
    Hg, Wg = grid_shape(*source.shape[-2:], spatial_bins)
    grid = fit_bgu(source, target, guide, luma_bins, Hg, Wg)
    out["grid"] = slice_apply(grid, guide, source, impl="grid_sample").clamp(0, 1)
    return out


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(min(n, old))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def oracle_study(photos: Sequence[str] | None = None, size: int = 256, families: Sequence[str] | None = None,
                 strength: str = "normal", directions: Sequence[int] = (1, -1), luma_bins: int = 8,
                 spatial_bins: int = 16, cap_db: float = 60.0, min_coverage: float = 0.02,
                 batch: int = 8) -> dict:
    """Run the oracles on every family x target x direction x photo.

    Args:
        photos: collection photos (default: the test split of :mod:`course_lib.world`).
        size: shorter side the photos are resized to.
        families: default all of :data:`course_lib.world.WORLD_FAMILIES`.
        strength: a key of :data:`course_lib.grammar.STRENGTHS`.
        batch: cases fitted together (memory grows with it: about 20 MB per case at 256 px).

    Returns:
        dict with ``rows`` (one per family: ``family``, ``kind``, ``cases``, ``absent``,
        ``identity`` (PSNR of doing nothing), and one mean PSNR per oracle), ``cases`` (every
        case), ``photos``, ``size``, ``strength``, ``seconds``.
    """
    t0 = time.perf_counter()
    photos = list(photos if photos is not None else world.photo_names("test"))
    fams = [world.WORLD_FAMILY[f] for f in (families or world.WORLD_FAMILY)]
    cases = []
    with torch.no_grad():
        for name in photos:
            src = world.load_photo(name, size)[None]
            coverage = world.target_weights(src)
            todo = []  # (case, target image): fitted in batches, which costs far less than one by one
            for fam in fams:
                for target in fam.targets:
                    for d in directions:
                        amount = d * grammar.STRENGTHS[strength] * fam.unit
                        case = {"photo": name, "family": fam.name, "target": target, "amount": amount}
                        if fam.kind in ("colour", "region") and coverage[target] < min_coverage:
                            cases.append({**case, "absent": True})
                        else:
                            todo.append((case, fam.fn(src, amount, target)))
            for k in range(0, len(todo), batch):
                chunk = todo[k:k + batch]
                outs = torch.cat([out for _, out in chunk])  # (b, 3, H, W)
                srcs = src.expand(len(chunk), -1, -1, -1)
                fits = oracle_fits(srcs, outs, luma_bins, spatial_bins)
                scores = {key: metrics.psnr(v, outs).clamp(max=cap_db) for key, v in fits.items()}
                scores["identity"] = metrics.psnr(srcs, outs).clamp(max=cap_db)
                for j, (case, _) in enumerate(chunk):
                    cases.append({**case, **{key: float(v[j]) for key, v in scores.items()}, "absent": False})
    rows = []
    for fam in fams:
        mine = [c for c in cases if c["family"] == fam.name]
        real = [c for c in mine if not c["absent"]]
        row = {"family": fam.name, "kind": fam.kind, "cases": len(real), "absent": len(mine) - len(real)}
        for key in ("identity",) + ORACLES:
            row[key] = sum(c[key] for c in real) / len(real) if real else math.nan
        rows.append(row)
    return {"rows": rows, "cases": cases, "photos": photos, "size": size, "strength": strength,
            "directions": list(directions),
            "luma_bins": luma_bins, "spatial_bins": spatial_bins, "seconds": time.perf_counter() - t0}


def verdict(row: dict) -> str:
    """One word per family: where the grid is needed, where it is enough, where it falls short."""
    if math.isnan(row["grid"]):
        return "no case"
    if row["grid"] < GRID_TARGET_DB:
        return "grid falls short"
    if row["global_affine"] <= GLOBAL_TARGET_DB:
        return "needs the grid"
    return "global is enough" if row["kind"] == "global" else "grid helps"


def markdown(result: dict) -> str:
    """The study as a markdown table with a verdict per family and a short reading."""
    n = len(result["photos"])
    lines = [f"Oracle study: {n} photo{'s' if n != 1 else ''} ({', '.join(result['photos'][:4])}{', ...' if n > 4 else ''}) at {result['size']} px (shorter side), "
             f"strength '{result['strength']}', "
             + "directions " + "/".join("+" if d > 0 else "-" for d in result.get("directions", (1, -1))) +
             f", every target the photo shows; mean PSNR in dB "
             f"(capped at 60) against the exact target; grid {result['spatial_bins']} cells on the shorter side "
             f"x {result['luma_bins']} luma bins.", "",
             "| family | kind | cases | no-op | global affine | luma curve | grid (BGU) | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['family']} | {r['kind']} | {r['cases']}"
                     + (f" (+{r['absent']} absent)" if r["absent"] else "")
                     + "".join(f" | {r[k]:.1f}" if not math.isnan(r[k]) else " | -" for k in ("identity",) + ORACLES)
                     + f" | {verdict(r)} |")
    new = [r for r in result["rows"] if r["kind"] != "global" and r["cases"]]
    ok_grid = [r["family"] for r in new if r["grid"] >= GRID_TARGET_DB]
    ok_glob = [r["family"] for r in new if r["global_affine"] <= GLOBAL_TARGET_DB]
    short = [r["family"] for r in result["rows"] if r["cases"] and r["grid"] < GRID_TARGET_DB]
    lines += ["", f"- New families with grid >= {GRID_TARGET_DB:.0f} dB: {len(ok_grid)} of {len(new)}; "
              f"with global affine <= {GLOBAL_TARGET_DB:.0f} dB: {len(ok_glob)} of {len(new)}.",
              "- The grid cannot represent well: " + (", ".join(short) if short else "none") + ".",
              f"- {result['seconds']:.0f} s."]
    return "\n".join(lines)


def table_markdown(result: dict) -> str:
    """Only the table of :func:`markdown` (family, kind, cases, no-op, the three oracles, verdict),
    as the README and lesson 00 show it."""
    lines = ["| family | kind | cases | no-op | global affine | luma curve | grid (BGU) | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['family']} | {r['kind']} | {r['cases']} | "
              + " | ".join(f"{r[k]:.1f}" for k in ("identity",) + ORACLES) + f" | {verdict(r)} |" for r in result["rows"]]
    return "\n".join(lines)


def shipped_result() -> dict:
    """The full study as measured for the course (``data/results/oracle.json``, without the per-case list)."""
    return json.loads((RESULTS_DIR / "oracle.json").read_text())


def free_stem(folder: Path, stem: str) -> Path:
    """``folder / stem``, or ``stem-2``, ``stem-3``, ... : the first whose .md and .json do not exist."""
    k = 1
    while True:
        cand = folder / (stem if k == 1 else f"{stem}-{k}")
        if not cand.with_suffix(".md").exists() and not cand.with_suffix(".json").exists():
            return cand
        k += 1


def write(result: dict, out_dir: str | Path | None = None, stem: str | None = None) -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` under ``outputs/oracle`` (never over an existing file)."""
    folder = Path(out_dir) if out_dir is not None else OUTPUT_DIR / "oracle"
    base = free_stem(folder, stem or f"oracle_{len(result['photos'])}photos_{result['size']}px")
    md = atomic_write_text(base.with_suffix(".md"), markdown(result) + "\n", overwrite=False)
    js = atomic_write_text(base.with_suffix(".json"), json.dumps(result, indent=1) + "\n", overwrite=False)
    return [md, js]
