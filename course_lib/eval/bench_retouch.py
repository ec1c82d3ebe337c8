"""``python -m course_lib bench retouch``: the paper-style results table on the course's held-out benchmark (lesson 08).

Every method edits the same held-out photos under **held-out paraphrases** (the hardest split:
photos and wordings the models never saw; ``--paraphrases train`` for new photos only) and
is scored against the exact ground truth:

* fidelity: PSNR (dB), CIEDE2000, and KID (kernel inception distance, Bińkowski et al. 2018,
  :func:`course_lib.metrics.kid`) between the set of outputs and the set of targets, on VGG-16 features - the ImageNet
  backbone when :mod:`course_lib.perceptual` finds it, otherwise its random-feature fallback,
  labelled as such in every header;
* instruction accuracy (%) and content drift (:mod:`course_lib.eval.score`);
* latency for one 1080p photo on this machine (every method timed round-robin, median) and the
  speed-up over the 50-step teacher.

Diffusion methods (the teacher at 50 and 4 steps, Inverse-and-Edit) work at the teacher's
32 x 32 px; their *change* is upsampled and added to the photo (the same low-frequency edit
transfer as :func:`course_lib.inversion.edit_image`), so they are not penalised for blur they
did not cause. Methods whose checkpoint is missing are listed as skipped, never invented.

``--data world`` runs the same table on the data world 2.0 (:mod:`course_lib.eval.world`): its
``--split`` photos (test or val) in the training wording or held-out phrasings, the world
teacher (``load_teacher("world")``) at 50 and 4 steps as the reference, the supervised student
(trained on the world) and only those VSD students whose checkpoint's provenance says
``"data": "world"``; first-world models (the fine-tuned VSD students, the learned global affine,
Inverse-and-Edit) are listed as skipped. Each row also gives the PSNR over the **global** and
the **content-aware** items (:func:`course_lib.eval.world.kind_of`). ``--extra NAME=PATH`` adds
student checkpoints (e.g. candidates under ``outputs/``) to either table.
Outputs (``bench_retouch.{csv,md,png}``) replace earlier ones only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import bench, config
from ..inversion import invert_and_edit, shipped_models
from ..metrics import apply_affine, fit_global_affine, kid
from ..perceptual import load_lpips
from ..student import load_student, read_metadata, retouch_fused
from ..teacher import load_teacher
from . import score as S, tables
from . import world as W
from .heldout import SEED, heldout_batch
from .student import load_baseline, student_method

Method = S.Method
#: Columns of ``bench_retouch.csv`` (and keys of the rows).
COLUMNS = ("method", "psnr", "de00", "kid", "accuracy", "drift", "ms_1080p", "speedup")
#: The columns that time a method (one 1080p photo, and the speed-up over the 50-step teacher).
LATENCY_COLUMNS = ("ms_1080p", "speedup")
#: ``--data world``: :data:`COLUMNS` with the PSNR over the global and the content-aware items.
WORLD_COLUMNS = ("method", "psnr", ("psnr_global", "PSNR global (dB) ↑"),
                 ("psnr_content", "PSNR content-aware (dB) ↑"), "de00", "kid", "accuracy", "drift", "ms_1080p", "speedup")
#: The scores every method gets (besides the set-level KID).
KEYS = ("psnr", "de00", "accuracy", "drift")
#: ``--data`` choices: the first world's held-out pairs, or the data world 2.0.
DATA = ("pairs", "world")
#: The VSD students of lessons 05 and 06: table label -> checkpoint name in the weights folder.
VSD_STUDENTS = {"student, VSD (lesson 05)": "student_vsd.safetensors",
                "student, VSD from scratch, no paired targets (lesson 05)": "student_vsd_scratch.safetensors",
                "student, VSD + alignment (lesson 06)": "student_vsd_align.safetensors",
                "student, VSD + alignment from scratch, no paired targets (lesson 06)":
                    "student_vsd_align_scratch.safetensors"}
#: ``--data pairs``: the first world's copy of a VSD student whose shipped name now holds the data world's.
FIRST_WORLD_FILES = {"student_vsd_scratch.safetensors": "student_vsd_scratch_first_world.safetensors"}


def first_world_path(weights: Path, name: str) -> Path:
    """Where the first world's copy of the shipped student ``name`` is: ``weights /``
    :data:`FIRST_WORLD_FILES` ``[name]`` when that file exists (the name itself now holds the data
    world's student), else ``weights / name``."""
    first = weights / FIRST_WORLD_FILES.get(name, name)
    return first if first.is_file() else weights / name


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


def teacher_label(steps: int, data: str = "pairs") -> str:
    """The table label of the teacher at ``steps`` DDIM steps: ``"teacher, 50 DDIM steps (lesson 04)"``,
    or ``"teacher (data world), 50 DDIM steps (lesson 04)"`` for ``data="world"``."""
    return f"teacher{' (data world)' if data == 'world' else ''}, {steps} DDIM steps (lesson 04)"


def is_teacher(method: str, steps: int) -> bool:
    """Whether a row's ``method`` is the teacher at ``steps`` steps, of either world (``"teacher, 50 …"``
    or ``"teacher (data world), 50 …"``; not ``"teacher, 500 …"``)."""
    return method.replace("teacher (data world),", "teacher,", 1).startswith(f"teacher, {steps} ")


def teacher_row(result: dict, steps: int = 50) -> dict | None:
    """The row of the teacher at ``steps`` steps in a :func:`run` result (either world), ``None`` if absent."""
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


def _teacher_methods(teacher, steps_teacher: tuple[int, ...], data: str) -> dict[str, Method]:
    """The teacher at each number of steps, at its working size, its change transferred onto the photo."""
    out: dict[str, Method] = {}
    for n in steps_teacher:
        def teacher_fn(s, i, t, n=n):
            small = at_teacher_size(teacher, s)
            return transfer_edit(s, small, teacher.edit(small, i, steps=n))
        out[teacher_label(n, data)] = teacher_fn
    return out


def build_methods(steps_teacher: tuple[int, ...] = (50, 4), data: str = "pairs",
                  extra: dict[str, str | Path] | None = None, weights_dir: str | Path | None = None,
                  teacher=None) -> tuple[dict[str, Method], list[str]]:
    """Name -> ``fn(source (B,3,H,W), instructions, target) -> output``, and notes on skipped methods.

    Args:
        steps_teacher: the teacher's rows, one per number of DDIM steps.
        data: ``"pairs"`` (the first world: its teacher, every shipped student, Inverse-and-Edit) or
            ``"world"`` (the data world 2.0: the world teacher, the supervised student, the VSD students
            whose checkpoint's provenance has ``"data": "world"``; first-world models are noted as skipped).
        extra: more students, table label -> checkpoint path (added after the shipped ones).
        weights_dir: where the shipped students are (default :data:`course_lib.config.WEIGHTS_DIR`).
        teacher: the teacher to use (default ``load_teacher("embedded")``, ``load_teacher("world")`` for
            ``data="world"``).

    Returns:
        ``(methods, notes)``: methods in table order, and one line per skipped method with its reason.

    Raises:
        ValueError: an unknown ``data``, or an extra label that is already a method.
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, not {data!r}")
    weights = Path(weights_dir) if weights_dir is not None else config.WEIGHTS_DIR
    methods: dict[str, Method] = {"identity": lambda s, i, t: s}
    notes: list[str] = []
    methods["global affine (oracle: fitted to the target)"] = lambda s, i, t: apply_affine(fit_global_affine(s, t), s)
    if data == "world":
        methods.update(_world_students(weights, notes))
    else:
        baseline = load_baseline(weights / "student_global_affine.safetensors" if weights_dir is not None else None,
                                 device="cpu")
        if baseline is not None:
            methods["global affine (learned)"] = student_method(baseline.eval())
        supervised = weights / "student_supervised.safetensors" if weights_dir is not None else None
        methods["student, supervised (lesson 03)"] = student_method(load_student(supervised, device="cpu").eval())
        for label, name in VSD_STUDENTS.items():
            path = first_world_path(weights, name)
            if path.is_file():
                methods[label] = student_method(load_student(path, device="cpu").eval())
            else:
                notes.append(f"{label}: skipped, no checkpoint at {path}")
    for label, path in (extra or {}).items():
        if label in methods:
            raise ValueError(f"--extra name {label!r} is already a method of the table")
        methods[label] = student_method(load_student(path, device="cpu").eval())
    if teacher is None:
        teacher = load_teacher("world" if data == "world" else "embedded")
    methods.update(_teacher_methods(teacher, steps_teacher, data))
    if data != "world":
        notes.append("Inverse-and-Edit (lesson 07): skipped, a model of the world teacher (its generator is "
                     "that teacher, not the first world's)")
        return methods, notes
    try:
        fwd, gen = shipped_models()

        def ie_fn(s, i, t):
            small = at_teacher_size(gen, s)
            return transfer_edit(s, small, invert_and_edit(fwd, gen, small, i, 4, residual=True))
        # the studio's mode: the round trip's error removed (x + G(z; y) − G(z; ∅)), 4 + 8 steps
        methods["Inverse-and-Edit, 4 + 8 steps, residual (lesson 07)"] = ie_fn
    except FileNotFoundError as exc:
        notes.append(f"Inverse-and-Edit: skipped ({str(exc).splitlines()[0]})")
    return methods, notes


def _world_students(weights: Path, notes: list[str]) -> dict[str, Method]:
    """The data world's students in ``weights``: the supervised one and every VSD student whose
    provenance says ``"data": "world"``; a line in ``notes`` for each one skipped (and for the learned
    global affine, a first-world model)."""
    notes.append("global affine (learned): skipped, a first-world model (trained on the first world's pairs)")
    out: dict[str, Method] = {}
    supervised = weights / "student_supervised.safetensors"
    if supervised.is_file():
        out["student, supervised (lesson 03)"] = student_method(load_student(supervised, device="cpu").eval())
    else:
        notes.append(f"student, supervised (lesson 03): skipped, no checkpoint at {supervised}")
    for label, name in VSD_STUDENTS.items():
        path = weights / name
        if not path.is_file():
            notes.append(f"{label}: skipped, no checkpoint at {path}")
            continue
        trained_on = json.loads(read_metadata(path).get("provenance", "{}") or "{}").get("data")
        if trained_on == "world":
            out[label] = student_method(load_student(path, device="cpu").eval())
        elif trained_on == "pairs":
            notes.append(f"{label}: skipped: trained on the first world (provenance data = pairs)")
        elif trained_on is None:
            notes.append(f"{label}: skipped: a first-world model (fine-tuned from the first world's student; "
                         "its checkpoint records no provenance data)")
        else:
            notes.append(f"{label}: skipped: not trained on the data world (provenance data = {trained_on})")
    return out


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
    """``--paraphrases`` -> the data world's wording: ``"train"`` or ``"heldout_phrasing"`` (``vsd-study`` uses it too)."""
    return "train" if paraphrases == "train" else "heldout_phrasing"


def run(n: int | None = None, size: int | None = None, paraphrases: str = "heldout", seed: int = SEED,
        batch_size: int = 16, repeats: int | None = None, latency: bool = True,
        methods: dict[str, Method] | None = None, notes: list[str] | None = None, data: str = "pairs",
        split: str = "test", extra: dict[str, str | Path] | None = None) -> dict:
    """Score every method (see the module docstring).

    Args:
        n: items (default 8 FAST / 96 FULL). size: image side in pixels (default 64 / 128).
        paraphrases: ``"heldout"`` or ``"train"`` phrasings (for ``data="world"``: held-out phrasings or the
            training wording, :func:`world_wording`).
        repeats: timed 1080p calls per method (default 1 FAST / 7 FULL). latency: time them at all.
        methods, notes: the methods to score and notes on skipped ones (default :func:`build_methods`).
        data: ``"pairs"``, the first world's held-out photos (``seed`` picks them), or ``"world"``, ``n``
            items of the data world 2.0's ``split`` photos (``"test"`` or ``"val"``;
            :func:`course_lib.eval.world.world_batch`).
        extra: more students for :func:`build_methods`, label -> checkpoint (ignored when ``methods`` is given).

    Returns:
        dict with ``rows`` (method, psnr, de00, kid, accuracy (%), drift, ms_1080p, speedup; with
        ``data="world"`` also ``psnr_global`` and ``psnr_content``, the PSNR over the items of each kind,
        ``nan`` when there are none), ``n``, ``size``, ``paraphrases``, ``kid_label``, ``notes`` (skipped
        methods) and ``data``; with ``data="world"`` also ``split``, ``wording`` and ``groups`` (items per
        kind of edit). ``speedup`` is over the 50-step teacher of either world (:func:`teacher_row`).
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, not {data!r}")
    n = n or config.pick(fast=8, full=96)
    size = size or config.pick(fast=64, full=128)
    repeats = repeats or config.pick(fast=1, full=7)
    if methods is None:
        methods, notes = build_methods(data=data, extra=extra)
    notes = list(notes or [])
    perceptual = load_lpips()
    if data == "world":
        batch = W.world_batch(n, size, world_wording(paraphrases), seed, split=split)
    else:
        batch = heldout_batch(n, size, seed, paraphrases)
    tgt_feats = vgg_features(perceptual, batch["target"])
    rows = []
    bar = config.progress(total=len(methods), desc="bench retouch", disable=config.is_fast())
    for name, fn in methods.items():
        r = S.run(lambda s, i, t: fn(s, i, t).float(), batch, batch_size, KEYS, keep_output=True)
        rows.append({"method": name, **{k: r["scores"][k] for k in ("psnr", "de00")},
                     "kid": 1000 * kid(vgg_features(perceptual, r["output"]), tgt_feats),
                     **{k: r["scores"][k] for k in ("accuracy", "drift")}, "ms_1080p": float("nan")})
        if data == "world":
            groups = W.group_scores({"psnr": r["items"]["psnr"]}, batch["kind"])
            rows[-1]["psnr_global"] = groups["global"].get("psnr", float("nan"))
            rows[-1]["psnr_content"] = groups["content-aware"].get("psnr", float("nan"))
        bar.update(1)
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
    result = {"rows": rows, "n": n, "size": size, "paraphrases": paraphrases, "kid_label": kid_label, "notes": notes,
              "data": data}
    if latency:
        result["stages"] = stages
    if data == "world":
        result.update(split=split, wording=world_wording(paraphrases),
                      groups={g: sum(k == g for k in batch["kind"]) for g in ("global", "content-aware")})
    return result


def columns(result: dict) -> tuple:
    """The table's columns: :data:`WORLD_COLUMNS` for a ``data="world"`` result, else :data:`COLUMNS`."""
    return WORLD_COLUMNS if result.get("data") == "world" else COLUMNS


def photos(result: dict) -> str:
    """Which photos a result is on: ``"held-out photos"`` or ``"data world 2.0 test photos"`` (its split)."""
    if result.get("data") == "world":
        return f"data world 2.0 {result.get('split', 'test')} photos"
    return "held-out photos"


def format_table(result: dict, latency: bool = True) -> str:
    """Markdown table of :func:`run` (world results: the items per kind of edit in the title).

    Args:
        latency: show the latency columns (:data:`LATENCY_COLUMNS`); ``False`` leaves them out, for
            a run made with ``--no-latency`` or one whose latencies are quoted from another run only
            (lesson 08 quotes the training-phrasing run's), whether the rows hold them or not.
    """
    n = f"n = {result['n']}"
    if result.get("data") == "world":
        g = result.get("groups", {})
        n += f" ({g.get('global', '?')} global, {g.get('content-aware', '?')} content-aware edits), world teacher"
    head = (f"{photos(result)} × {result['paraphrases']} phrasings, {n}, {result['size']} px; "
            + ("latency: one 1080p photo on this machine" if latency else "latency: not shown"))
    cols = [("kid", f"{result['kid_label']} ↓") if c == "kid" else c for c in columns(result)]
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
        result: a :func:`run` result (``data/results/bench_retouch_*.json``), with latencies.
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
    tier = "data world teacher" if result.get("data") == "world" else "embedded tier"
    lines = [f"| claim | paper | this course (CPU, {tier}) |", "|---|---|---|",
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
                     f"50-step teacher's {t50['psnr']:.2f} dB ({result['paraphrases']} phrasings, {photos(result)}) |")
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
    ax.set_title(f"{photos(result)} × {result['paraphrases']} phrasings (n = {result['n']})", fontsize=9)
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
        return tables.write({csv_path: tables.csv_text(result["rows"], columns(result)), md_path: format_table(result) + "\n",
                             png_path: lambda tmp: fig.savefig(tmp, dpi=120, format="png")}, overwrite=overwrite)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib bench retouch",
                                description="The paper-style results table: every method on held-out photos x "
                                            "held-out paraphrases (fidelity, KID, accuracy, drift, 1080p latency, "
                                            "speed-up over the 50-step teacher). Writes CSV, markdown and a plot. "
                                            "--data world: the same on the data world 2.0's photos with the world "
                                            "teacher, PSNR also per kind of edit (global, content-aware).")
    p.add_argument("--n", type=int, default=None, help="items (default: 8 FAST / 96 FULL)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: 64 FAST / 128 FULL)")
    p.add_argument("--paraphrases", choices=["heldout", "train"], default="heldout",
                   help="held-out or training phrasings (--data world: held-out phrasings or the training wording)")
    p.add_argument("--data", choices=list(DATA), default="pairs",
                   help="pairs: the first world's held-out photos, its teacher and students (default); world: the "
                        "data world 2.0's photos (--split) with the world teacher, the supervised student and the "
                        "VSD students whose provenance says data = world (first-world models listed as skipped)")
    p.add_argument("--split", choices=["test", "val"], default=None,
                   help="with --data world: the world's test (default) or validation photos")
    p.add_argument("--extra", default=None, metavar="NAME=PATH[,NAME=PATH...]",
                   help="more student checkpoints to score, each as a row named NAME (e.g. candidates under outputs/)")
    p.add_argument("--repeats", type=int, default=None, help="timed 1080p calls per method, round-robin over the methods (median)")
    p.add_argument("--no-latency", action="store_true", help="skip the 1080p timings")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help=f"output folder (default {config.OUTPUT_DIR})")
    p.add_argument("--overwrite", action="store_true", help="replace existing bench_retouch.csv/.md/.png")
    p.add_argument("--json", default=None, help="also write the result and its command here (e.g. under data/results/)")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    out = Path(a.out) if a.out else config.OUTPUT_DIR
    t0 = time.perf_counter()
    try:
        if a.split is not None and a.data != "world":
            raise ValueError("--split is for --data world (the first world's held-out photos have no split)")
        extra = parse_extra(a.extra)
        tables.check_free(output_paths(out) + ([Path(a.json)] if a.json else []), a.overwrite)
        result = run(a.n, a.size, a.paraphrases, repeats=a.repeats, latency=not a.no_latency, data=a.data,
                     split=a.split or "test", extra=extra)
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
    """``python -m course_lib bench {slice,retouch}``: ``retouch`` is this module, ``slice`` :func:`course_lib.bench.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "retouch":
        return main(argv[1:])
    return bench.main(argv)
