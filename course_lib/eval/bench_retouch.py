"""``python -m course_lib bench retouch``: the paper-style results table on the test photos (lesson 08).

Every method edits the same test crops (:func:`course_lib.eval.world.world_batch`, never seen in
training) under the **training wording** and under **held-out phrasings**, and is scored against the
exact ground truth:

* fidelity: PSNR (dB; also over the **global** and the **content-aware** items,
  :func:`course_lib.eval.world.kind_of`), CIEDE2000, and KID (kernel inception distance,
  Bińkowski et al. 2018, :func:`course_lib.metrics.kid`) between the set of outputs and the set of
  targets, on VGG-16 features - the ImageNet backbone when :mod:`course_lib.perceptual` finds it,
  otherwise its random-feature fallback, labelled as such in every header;
* edit accuracy (%: went half-way to the target) and content drift (:mod:`course_lib.eval.score`);
* latency for one 1080p photo on this machine (every method timed in one round-robin run, median)
  and the speed-up over the 50-step teacher.

The methods are :data:`REGISTRY` (name -> factory, in table order): identity and the oracles as
reference rows, the shipped students, the teacher at 50 and 4 steps and Inverse-and-Edit. Adding a
method is one entry. Diffusion methods work at the teacher's 32 x 32 px; their *change* is upsampled
and added to the photo (the same low-frequency edit transfer as :func:`course_lib.inversion.edit_image`),
so they are not penalised for blur they did not cause. A method whose checkpoint is missing, or was
not trained on the collection, is listed as skipped, never invented. ``--extra NAME=PATH`` adds
student checkpoints (e.g. candidates under ``outputs/``). Outputs (``bench_retouch.{csv,md,png}``)
replace earlier ones only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import bench, config
from ..inversion import invert_and_edit, shipped_models
from ..metrics import apply_affine, fit_global_affine, kid
from ..oracle import oracle_fits
from ..perceptual import load_lpips
from ..student import load_student, read_metadata, retouch_fused
from ..teacher import load_teacher
from . import retouch_memory, score as S, tables
from . import world as W
from .heldout import SEED
from .student import load_baseline, student_method

Method = S.Method
#: The two wordings of every table: the training grammar, and held-out whole phrasings (suffix ``_heldout``).
WORDINGS = ("train", "heldout_phrasing")
SUFFIX = {"train": "", "heldout_phrasing": "_heldout"}
#: The scores every method gets per wording (besides the set-level KID and the PSNR per kind of edit).
KEYS = ("psnr", "de00", "edit_accuracy", "drift")
#: Columns of ``bench_retouch.csv`` (and keys of the rows): the training wording, then the held-out phrasings.
COLUMNS = ("method", "psnr", ("psnr_global", "PSNR global (dB) ↑"), ("psnr_content", "PSNR content-aware (dB) ↑"),
           "de00", "kid", "edit_accuracy", "drift", ("psnr_heldout", "PSNR held-out phrasing (dB) ↑"),
           ("edit_accuracy_heldout", "edit accuracy held-out phrasing (%) ↑"), "ms_1080p", "speedup")
#: The columns that time a method (one 1080p photo, and the speed-up over the 50-step teacher).
LATENCY_COLUMNS = ("ms_1080p", "speedup")


def transfer_edit(source: torch.Tensor, small_source: torch.Tensor, small_edit: torch.Tensor) -> torch.Tensor:
    """``source + upsample(small_edit − small_source)``, clipped: a low-resolution edit on a full-resolution photo.

    Args:
        source: (B, 3, H, W); small_source, small_edit: (B, 3, h, w), all in [0, 1].
    """
    delta = F.interpolate(small_edit - small_source, size=source.shape[-2:], mode="bilinear", align_corners=False)
    return (source + delta).clamp(0, 1)


def at_teacher_size(teacher, src: torch.Tensor) -> torch.Tensor:
    """``src`` (B, 3, H, W) resized (antialiased) to the teacher's working size, clipped to [0, 1]."""
    size = teacher.working_size(*src.shape[-2:])
    return F.interpolate(src, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def teacher_label(steps: int) -> str:
    """The table label of the teacher at ``steps`` DDIM steps: ``"teacher, 50 DDIM steps (lesson 04)"``."""
    return f"teacher, {steps} DDIM steps (lesson 04)"


def is_teacher(method: str, steps: int) -> bool:
    """Whether a row's ``method`` is the teacher at ``steps`` steps (``"teacher, 50 …"``; not ``"teacher, 500 …"``)."""
    return method.startswith(f"teacher, {steps} ")


def teacher_row(result: dict, steps: int = 50) -> dict | None:
    """The row of the teacher at ``steps`` steps in a :func:`run` result, ``None`` if absent."""
    return next((r for r in result["rows"] if is_teacher(r["method"], steps)), None)


def parse_extra(text: str | None) -> dict[str, Path]:
    """``--extra``'s ``NAME=PATH[,NAME=PATH...]`` -> ``{NAME: Path(PATH)}`` (``{}`` for ``None`` or "").

    Raises:
        ValueError: an item without ``=``, an empty name or path, or a name given twice.
        FileNotFoundError: a path that is not a file.
    """
    out: dict[str, Path] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, eq, path = (x.strip() for x in item.partition("="))
        if not eq or not name or not path:
            raise ValueError(f"--extra takes NAME=PATH pairs separated by commas, not {item!r}")
        if name in out:
            raise ValueError(f"--extra names {name!r} twice")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--extra {name}: no checkpoint at {path}")
        out[name] = Path(path)
    return out


# ----------------------------------------------------------------------------- the methods


@dataclasses.dataclass
class Context:
    """What a method's factory may use: the weights folder and the teacher (loaded once, on first use)."""

    weights: Path
    teacher_: object = None

    @property
    def teacher(self):
        if self.teacher_ is None:
            self.teacher_ = load_teacher("embedded")
        return self.teacher_


Factory = Callable[[Context], Method]


def trained_on(path: Path) -> str | None:
    """What a student checkpoint says it was trained on: its ``data`` key (or its provenance's)."""
    meta = read_metadata(path)
    return meta.get("data") or json.loads(meta.get("provenance", "{}") or "{}").get("data")


def student_file(name: str, global_affine: bool = False) -> Factory:
    """A factory for a shipped student ``name`` in the weights folder, checked to be trained on the collection.

    Raises (in the factory):
        FileNotFoundError: no such checkpoint. ValueError: trained on other data.
    """
    def make(ctx: Context) -> Method:
        path = ctx.weights / name
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        if trained_on(path) != "world":
            raise ValueError(f"not trained on the photo collection (its metadata says data = {trained_on(path)})")
        model = load_baseline(path, device="cpu") if global_affine else load_student(path, device="cpu")
        return student_method(model.eval())
    return make


def teacher_steps(n: int) -> Factory:
    """A factory for the teacher at ``n`` DDIM steps, at its working size, its change transferred onto the photo."""
    def make(ctx: Context) -> Method:
        teacher = ctx.teacher

        def fn(s, i, t):
            small = at_teacher_size(teacher, s)
            return transfer_edit(s, small, teacher.edit(small, i, steps=n))
        return fn
    return make


def inverse_and_edit(ctx: Context) -> Method:
    """Inverse-and-Edit in the studio's mode: the round trip's error removed (x + G(z; y) − G(z; ∅)), 4 + 8 steps."""
    fwd, gen = shipped_models()

    def fn(s, i, t):
        small = at_teacher_size(gen, s)
        return transfer_edit(s, small, invert_and_edit(fwd, gen, small, i, 4, residual=True))
    return fn


#: Every method of the table, in order: name -> factory. Adding a method is one entry.
REGISTRY: dict[str, Factory] = {
    "identity": lambda ctx: (lambda s, i, t: s),
    "global affine (oracle: fitted to the target)": lambda ctx: (lambda s, i, t: apply_affine(fit_global_affine(s, t), s)),
    "grid (oracle: BGU fitted to the target)": lambda ctx: (lambda s, i, t: oracle_fits(s, t)["grid"]),
    "global affine (learned)": student_file("student_global_affine.safetensors", global_affine=True),
    "student, supervised (lesson 03)": student_file("student_supervised.safetensors"),
    "student, VSD from scratch, no paired targets (lesson 05)": student_file("student_vsd_scratch.safetensors"),
    teacher_label(50): teacher_steps(50),
    teacher_label(4): teacher_steps(4),
    "Inverse-and-Edit, 4 + 8 steps, residual (lesson 07)": inverse_and_edit,
}


def build_methods(names: Sequence[str] | None = None, extra: dict[str, str | Path] | None = None,
                  weights_dir: str | Path | None = None, teacher=None) -> tuple[dict[str, Method], list[str]]:
    """Name -> ``fn(source (B,3,H,W), instructions, target) -> output``, and notes on skipped methods.

    Args:
        names: the :data:`REGISTRY` entries to build (default all), kept in the registry's order.
        extra: more students, table label -> checkpoint path (added after the registry's students).
        weights_dir: where the shipped students are (default :data:`course_lib.config.WEIGHTS_DIR`).
        teacher: the teacher to use (default ``load_teacher("embedded")``, loaded when first needed).

    Returns:
        ``(methods, notes)``: methods in table order, and one line per skipped method with its reason.

    Raises:
        ValueError: an unknown name, or an extra label that is already a method.
    """
    unknown = set(names or ()) - set(REGISTRY)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(REGISTRY)}")
    ctx = Context(Path(weights_dir) if weights_dir is not None else config.WEIGHTS_DIR, teacher)
    methods: dict[str, Method] = {}
    notes: list[str] = []
    for name, make in REGISTRY.items():
        if names is not None and name not in names:
            continue
        if name.startswith("teacher") and extra:  # the extra students go after the shipped ones
            for label, path in extra.items():
                if label in methods or label in REGISTRY:
                    raise ValueError(f"--extra name {label!r} is already a method of the table")
                methods[label] = student_method(load_student(path, device="cpu").eval())
            extra = None
        try:
            methods[name] = make(ctx)
        except (FileNotFoundError, ValueError) as exc:
            notes.append(f"{name}: skipped ({str(exc).splitlines()[0]})")
    for label, path in (extra or {}).items():
        if label in methods or label in REGISTRY:
            raise ValueError(f"--extra name {label!r} is already a method of the table")
        methods[label] = student_method(load_student(path, device="cpu").eval())
    return methods, notes


# ----------------------------------------------------------------------------- KID


def vgg_features(perceptual, images: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled relu3_3 and relu4_3 VGG-16 features, (B, 768), of images in [0, 1]."""
    net = perceptual.net
    with torch.no_grad():
        feats = net.net(net.scaling_layer(images * 2 - 1))
    return torch.cat([feats[2].mean((2, 3)), feats[3].mean((2, 3))], 1)


# ----------------------------------------------------------------------------- the run


def interleaved_latency(fns: dict[str, Method], repeats: int, size: tuple[int, int] = (1080, 1920),
                        warmup: int = 1) -> dict[str, float]:
    """Median ms per method on one random photo, timed **round-robin**: each repeat times every
    method once, so a slow spell of a shared machine lands on all of them instead of on whichever
    method happened to be timed then; the ratios between methods are what the table reports.

    Returns:
        name -> median ms (CPU; nothing runs on a GPU here).
    """
    img = torch.rand(1, 3, *size)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn(img, ["make it warmer"], img)
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(img, ["make it warmer"], img)
                times[name].append(1000 * (time.perf_counter() - t0))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


#: Stages of :func:`stage_split`, in order: decoding, the edit's three stages, encoding.
STAGES = ("decode", "input", "grid", "pass", "encode")


def stage_split(model, repeats: int = 5, size: tuple[int, int] = (1080, 1920),
                threads: tuple[int, ...] | None = None, formats: tuple[str, ...] | None = None) -> list[dict]:
    """The student's 1080p edit split into stages, on one thread and on all: decoding the photo,
    the network's input read from it, the grid (the network), the pass over the pixels (guide, slice,
    apply, clamp, rounding) and encoding, for an 8-bit photo in and out (as ``retouch`` runs it) and for
    a float32 photo in and out (instruction already encoded). The edit reuses its output buffer. Thread
    counts other than torch's current one run in a subprocess started with them (with the shipped student).
    ``formats``: the file formats timed (default JPEG and PNG; JPEG alone in FAST mode).

    Returns:
        One dict per (threads, path, format): ``threads``, ``path`` (``"8-bit"`` or ``"float32"``),
        ``format`` (the file format decoded and encoded, 8-bit rows only), the stages' median ms,
        ``edit`` (input + grid + pass) and ``floor`` (ms to copy the photo's bytes into a
        preallocated, already-touched buffer: read once, write once).
    """
    import io
    import os

    import numpy as np
    from PIL import Image

    threads = threads or tuple(dict.fromkeys([1, os.cpu_count() or 1]))
    formats = formats or config.pick(fast=("JPEG",), full=("JPEG", "PNG"))
    gen = torch.Generator().manual_seed(0)
    # a smooth photo-like image (random noise would make the codecs' work unrepresentative)
    small = torch.rand(1, 3, size[0] // 60, size[1] // 60, generator=gen)
    photo_f = F.interpolate(small, size=size, mode="bicubic", align_corners=False).clamp(0, 1)  # (1, 3, H, W)
    hwc = (photo_f[0].permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).contiguous()  # (H, W, 3)
    files = {}
    for fmt in formats:
        buf = io.BytesIO()
        Image.fromarray(hwc.numpy()).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        files[fmt] = buf.getvalue()
    text = model.embed(["make it warmer"])
    photo8 = hwc.permute(2, 0, 1)[None]
    out8 = torch.empty_like(hwc).permute(2, 0, 1)[None]
    outf = torch.empty_like(photo_f)
    rows = []
    n_threads = torch.get_num_threads()

    def median(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * sorted(times)[len(times) // 2]

    def edit_stages(image, out) -> dict:
        runs = []
        retouch_fused(model, image, text, out=out)
        for _ in range(repeats):
            t: dict = {}
            retouch_fused(model, image, text, out=out, timings=t)
            runs.append(t)
        return {k: 1e3 * sorted(r[k] for r in runs)[len(runs) // 2] for k in ("input", "grid", "pass")}

    try:
        for n in threads:
            if n != n_threads:
                # another thread count in a fresh process: switching torch's thread count inside a process
                # left the network's convolutions ~50x slower here (thread pools re-created per call)
                rows += _stage_split_elsewhere(n, repeats, size, formats)
                continue
            with torch.no_grad():
                for path, image, out in (("8-bit", photo8, out8), ("float32", photo_f, outf)):
                    src = image.contiguous().flatten()
                    dst = torch.empty_like(src).copy_(src)
                    floor = median(lambda: dst.copy_(src))
                    st = edit_stages(image, out)
                    edit = sum(st.values())
                    if path == "float32":
                        rows.append({"threads": n, "path": path, "format": "-", "decode": float("nan"), **st,
                                     "encode": float("nan"), "edit": edit, "floor": floor})
                        continue
                    for fmt, data in files.items():
                        dec = median(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                        enc = median(lambda: Image.fromarray(hwc.numpy()).save(
                            io.BytesIO(), format=fmt, **({"quality": 95} if fmt == "JPEG" else {})))
                        rows.append({"threads": n, "path": path, "format": fmt, "decode": dec, **st, "encode": enc,
                                     "edit": edit, "floor": floor})
    finally:
        torch.set_num_threads(n_threads)
    return rows


def _stage_split_elsewhere(threads: int, repeats: int, size: tuple[int, int], formats: tuple[str, ...]) -> list[dict]:
    """:func:`stage_split` of the shipped student on ``threads`` threads, in a subprocess started with them."""
    import subprocess

    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from course_lib.eval.bench_retouch import stage_split; from course_lib.student import load_student; "
            "print(json.dumps(stage_split(load_student(device='cpu').eval(), int(sys.argv[2]), "
            "(int(sys.argv[3]), int(sys.argv[4])), (int(sys.argv[1]),), tuple(sys.argv[5:]))))")
    res = subprocess.run([sys.executable, "-c", code, str(threads), str(repeats), str(size[0]), str(size[1]), *formats],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def stages_table(rows: list[dict]) -> str:
    """Markdown table of :func:`stage_split`'s rows."""
    lines = ["The supervised student's 1080p edit by stage (ms, median); floor: copying the photo's bytes into "
             "a preallocated buffer", "",
             "| threads | photo | file | decode | network input | grid | pass | encode | edit | x off the floor |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        f = lambda v: "-" if v != v else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {r['threads']} | {r['path']} | {r['format']} | {f(r['decode'])} | {f(r['input'])} | "
                     f"{f(r['grid'])} | {f(r['pass'])} | {f(r['encode'])} | {f(r['edit'])} | {r['edit'] / r['floor']:.1f} |")
    return "\n".join(lines)


def world_wording(paraphrases: str) -> str:
    """``--paraphrases`` (``"train"`` or ``"heldout"``) -> the wording: ``"train"`` or ``"heldout_phrasing"`` (``vsd-study``)."""
    return "train" if paraphrases == "train" else "heldout_phrasing"


def run(n: int | None = None, size: int | None = None, seed: int = SEED, batch_size: int = 16,
        repeats: int | None = None, latency: bool = True, methods: dict[str, Method] | None = None,
        notes: list[str] | None = None, split: str = "test", extra: dict[str, str | Path] | None = None,
        wordings: Sequence[str] = WORDINGS) -> dict:
    """Score every method on the same ``n`` crops of the ``split`` photos in each wording (module docstring).

    Args:
        n: items per wording (default 8 FAST / 96 FULL). size: image side in pixels (default 64 / 128).
        seed: evaluation-set seed. batch_size: items per call. repeats: timed 1080p calls per method.
        latency: time every method (one round-robin run) and split the student's edit by stage.
        methods, notes: the table's methods and skipped-method notes (default :func:`build_methods`).
        split: ``"test"`` (default) or ``"val"`` (choosing recipes). extra: more students for
            :func:`build_methods` (ignored when ``methods`` is given). wordings: of :data:`WORDINGS`.

    Returns:
        dict with ``rows`` (per method: the keys of :data:`KEYS`, ``kid``, ``psnr_global`` and
        ``psnr_content`` (``nan`` when there are no such items) for each wording, suffixed as in
        :data:`SUFFIX`; ``ms_1080p`` and ``speedup`` over the 50-step teacher), ``n``, ``size``,
        ``split``, ``wordings``, ``groups`` (items per kind of edit and wording), ``kid_label``,
        ``notes`` and (with ``latency``) ``stages``.
    """
    n = n or config.pick(fast=8, full=96)
    size = size or config.pick(fast=64, full=128)
    repeats = repeats or config.pick(fast=1, full=7)
    if methods is None:
        methods, notes = build_methods(extra=extra)
    notes = list(notes or [])
    perceptual = load_lpips()
    batches = {w: W.world_batch(n, size, w, seed, split=split) for w in wordings}
    tgt_feats = {w: vgg_features(perceptual, b["target"]) for w, b in batches.items()}
    rows = []
    bar = config.progress(total=len(methods) * len(batches), desc="bench retouch", disable=config.is_fast())
    for name, fn in methods.items():
        row = {"method": name}
        for w, batch in batches.items():
            x = SUFFIX.get(w, f"_{w}")
            r = S.run(lambda s, i, t: fn(s, i, t).float(), batch, batch_size, KEYS, keep_output=True)
            groups = W.group_scores({"psnr": r["items"]["psnr"]}, batch["kind"])
            row.update({f"{k}{x}": r["scores"][k] for k in KEYS})
            row.update({f"kid{x}": 1000 * kid(vgg_features(perceptual, r["output"]), tgt_feats[w]),
                        f"psnr_global{x}": groups["global"].get("psnr", float("nan")),
                        f"psnr_content{x}": groups["content-aware"].get("psnr", float("nan"))})
            bar.update(1)
        rows.append({**row, "ms_1080p": float("nan")})
    bar.close()
    if latency:
        timed = {k: fn for k, fn in methods.items() if k != "identity" and "oracle" not in k}
        ms = interleaved_latency(timed, repeats)
        for r in rows:
            r["ms_1080p"] = ms.get(r["method"], float("nan"))
        stages = stage_split(load_student(device="cpu").eval(), repeats)
    ref = next((r["ms_1080p"] for r in rows if is_teacher(r["method"], 50)), float("nan"))
    for r in rows:
        r["speedup"] = ref / r["ms_1080p"] if r["ms_1080p"] == r["ms_1080p"] and r["ms_1080p"] > 0 else float("nan")
    kid_label = "KID×10³ (VGG-16, ImageNet)" if perceptual.real else "KID×10³ (random VGG-16 features: offline fallback)"
    result = {"rows": rows, "n": n, "size": size, "split": split, "wordings": list(batches), "kid_label": kid_label,
              "notes": notes, "groups": {w: {g: sum(k == g for k in b["kind"]) for g in ("global", "content-aware")}
                                         for w, b in batches.items()}}
    if latency:
        result["stages"] = stages
    return result


def format_table(result: dict, latency: bool = True) -> str:
    """Markdown table of :func:`run` (the items per kind of edit in the title).

    Args:
        latency: show the latency columns (:data:`LATENCY_COLUMNS`); ``False`` leaves them out, for
            a run made with ``--no-latency``, whether the rows hold them or not.
    """
    g = result.get("groups", {}).get("train", {})
    head = (f"{result.get('split', 'test')} photos, n = {result['n']} per wording ({g.get('global', '?')} global, "
            f"{g.get('content-aware', '?')} content-aware edits with the training wording), {result['size']} px; "
            "scores with the training wording, then with held-out phrasings; "
            + ("latency: one 1080p photo on this machine" if latency else "latency: not shown"))
    cols = [("kid", f"{result['kid_label']} ↓") if c == "kid" else c for c in COLUMNS]
    if not latency:
        cols = tables.without(cols, LATENCY_COLUMNS)
    table = tables.markdown(result["rows"], cols, title=head, notes=result["notes"])
    return table + ("\n\n" + stages_table(result["stages"]) if latency and result.get("stages") else "")


#: What the papers claim (their numbers, not measured here).
PAPER_CLAIMS = {
    "latency": "≈ 45 ms per 1080p photo on a GPU (InstantRetouch)",
    "speedup": "7-10× faster than diffusion editors (InstantRetouch)",
    "drift": "edits colour, not content (InstantRetouch, qualitative)",
    "inversion": "4-step reconstruction ≈ 50-step DDIM, > 12× less time (Inverse-and-Edit)",
    "no_pairs": "the grid student is trained from the teacher alone, no paired targets (InstantRetouch)",
}
#: The student that stands for the paper's (trained without pairs) when its checkpoint shipped.
PAPER_STUDENT = "student, VSD from scratch, no paired targets (lesson 05)"


def _row(result: dict, prefix: str) -> dict | None:
    return next((r for r in result["rows"] if r["method"].startswith(prefix)), None)


def papers_table(result: dict, inversion: dict | None = None) -> str:
    """The papers' claims next to what this course measured, as Markdown, every number read from results.

    Args:
        result: a :func:`run` result (``data/results/bench_retouch.json``), with latencies.
        inversion: ``inversion-eval``'s results (``data/results/inversion.json``), for the
            Inverse-and-Edit row (left out when ``None``).

    Returns:
        A table ``| claim | paper | this course |``. The student row is :data:`PAPER_STUDENT` when
        it was benchmarked, else the supervised student; CPU times are labelled as CPU times.
    """
    st = _row(result, PAPER_STUDENT) or _row(result, "student, supervised")
    t50, t4, ie = teacher_row(result, 50), teacher_row(result, 4), _row(result, "Inverse-and-Edit")
    if st is None or t50 is None:
        raise KeyError("papers_table needs a student row and the 50-step teacher's row")
    name, thr = st["method"].split(" (")[0], result.get("threads", "?")
    lines = ["| claim | paper | this course (CPU, embedded tier) |", "|---|---|---|",
             f"| one 1080p photo, grid student | {PAPER_CLAIMS['latency']} | {st['ms_1080p']:.0f} ms on {thr} CPU "
             f"thread(s) of this machine ({name}): a CPU time, not comparable with a GPU's |"]
    cells = [f"{st['speedup']:.1f}× over the 50-step teacher ({t50['ms_1080p']:.0f} ms)"]
    if t4 is not None:
        cells.append(f"{t4['ms_1080p'] / st['ms_1080p']:.1f}× over the 4-step teacher ({t4['ms_1080p']:.0f} ms)")
    lines.append(f"| speed-up over diffusion editors | {PAPER_CLAIMS['speedup']} | {', '.join(cells)}; our teacher is a toy, "
                 "so these ratios are not the paper's |")
    drift = [f"{st['drift']:.2f} levels ({name})", f"{t50['drift']:.2f} (teacher, 50 steps)"]
    if ie is not None:
        drift.append(f"{ie['drift']:.2f} (Inverse-and-Edit)")
    lines.append(f"| no content drift | {PAPER_CLAIMS['drift']} | drift {', '.join(drift)} |")
    if st["method"] == PAPER_STUDENT:
        lines.append(f"| trained without pairs | {PAPER_CLAIMS['no_pairs']} | {st['psnr']:.2f} dB PSNR against the "
                     f"50-step teacher's {t50['psnr']:.2f} dB (training wording, {result.get('split', 'test')} photos) |")
    if inversion is not None:
        rec = {r["method"]: r for r in inversion["reconstruction"]}
        ddim, cyc = rec["DDIM-50"], rec["cycle-trained 4-step"]
        lines.append(f"| Inverse-and-Edit reconstruction | {PAPER_CLAIMS['inversion']} | {ddim['psnr'] - cyc['psnr']:.2f} dB "
                     f"below DDIM-50 ({cyc['psnr']:.2f} vs {ddim['psnr']:.2f} dB), "
                     f"{ddim['ms_per_image'] / cyc['ms_per_image']:.1f}× less time (lesson 07) |")
    return "\n".join(lines)


def plot(result: dict, path: Path | None = None):
    """PSNR against latency per 1080p (log scale), one labelled point per timed method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in result["rows"]:
        if r["ms_1080p"] == r["ms_1080p"]:
            ax.scatter(r["ms_1080p"], r["psnr"])
            ax.annotate(r["method"].split(" (")[0], (r["ms_1080p"], r["psnr"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
    ident = next((r["psnr"] for r in result["rows"] if r["method"] == "identity"), None)
    if ident is not None:
        ax.axhline(ident, color="grey", ls=":", lw=1, label="identity (no edit)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms per 1080p photo (this machine)")
    ax.set_ylabel("PSNR to ground truth (dB)")
    ax.set_title(f"{result.get('split', 'test')} photos × training wording (n = {result['n']})", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def output_paths(out: Path) -> list[Path]:
    """Where :func:`write` writes: ``bench_retouch.csv``, ``.md`` and ``.png`` in ``out``."""
    return [Path(out) / f"bench_retouch.{ext}" for ext in ("csv", "md", "png")]


def write(result: dict, out: Path, overwrite: bool = False) -> list[Path]:
    """Write ``bench_retouch.csv``, ``.md`` and ``.png`` into ``out`` (atomically; existing files only with ``overwrite``)."""
    import matplotlib.pyplot as plt

    csv_path, md_path, png_path = output_paths(out)
    fig = plot(result)
    try:
        return tables.write({csv_path: tables.csv_text(result["rows"], COLUMNS), md_path: format_table(result) + "\n",
                             png_path: lambda tmp: fig.savefig(tmp, dpi=120, format="png")}, overwrite=overwrite)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib bench retouch",
                                description="The paper-style results table: every method on the same test crops with "
                                            "the training wording and with held-out phrasings (PSNR overall, global "
                                            "and content-aware, ΔE00, KID, edit accuracy, drift, 1080p latency from "
                                            "one round-robin run, speed-up over the 50-step teacher). Writes CSV, "
                                            "markdown and a plot.")
    p.add_argument("--n", type=int, default=None, help="items per wording (default: 8 FAST / 96 FULL)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: 64 FAST / 128 FULL)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="the test photos (default) or the validation photos (to choose a recipe)")
    p.add_argument("--extra", default=None, metavar="NAME=PATH[,NAME=PATH...]",
                   help="more student checkpoints to score, each as a row named NAME (e.g. candidates under outputs/)")
    p.add_argument("--repeats", type=int, default=None, help="timed 1080p calls per method, round-robin over the methods (median)")
    p.add_argument("--no-latency", action="store_true", help="skip the 1080p timings")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help=f"output folder (default {config.OUTPUT_DIR})")
    p.add_argument("--overwrite", action="store_true", help="replace existing bench_retouch.csv/.md/.png")
    p.add_argument("--json", default=None, help="also write the result and its command here (e.g. under data/results/)")
    p.add_argument("--note", action="append", default=[], help="a line for the table's notes (e.g. how busy the machine was)")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else config.OUTPUT_DIR
    t0 = time.perf_counter()
    try:
        extra = parse_extra(a.extra)
        tables.check_free(output_paths(out) + ([Path(a.json)] if a.json else []), a.overwrite)
        result = run(a.n, a.size, repeats=a.repeats, latency=not a.no_latency, split=a.split, extra=extra)
        result["notes"] += a.note
        result["command"] = "python -m course_lib bench retouch " + shlex.join(
            x for x in (argv if argv is not None else sys.argv[2:]) if x != "--overwrite")
        result["threads"] = torch.get_num_threads()
        print(format_table(result))
        paths = write(result, out, overwrite=a.overwrite)
        if a.json:
            paths += tables.write({a.json: tables.json_text(result, indent=1) + "\n"}, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, RuntimeError, KeyError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"bench retouch: {time.perf_counter() - t0:.0f} s; wrote {', '.join(str(x) for x in paths)}")
    return 0


def bench_main(argv: list[str] | None = None) -> int:
    """``python -m course_lib bench {slice,retouch,memory}``: ``retouch`` is this module, ``memory``
    :func:`course_lib.eval.retouch_memory.main`, ``slice`` :func:`course_lib.bench.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "retouch":
        return main(argv[1:])
    if argv and argv[0] == "memory":
        return retouch_memory.main(argv[1:])
    return bench.main(argv)
