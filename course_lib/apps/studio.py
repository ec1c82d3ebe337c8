"""The retouching studio: an ipywidgets app, in a notebook or as a web page (lesson 09).

Pick a bundled photo or upload one, type an instruction, choose a model and a strength,
and compare before and after with a split view; the edit's time is shown in milliseconds
and the full-resolution result can be downloaded. The logic lives in plain functions
(:func:`decode_upload`, :func:`resample_grid`, :func:`edit_student`, :func:`edit_teacher`,
:func:`compose_view`, :func:`download_html`) and one class, :class:`Studio`, whose widgets
only call them, so tests drive it without a browser::

    app = Studio()                 # in a notebook: display(app.ui)
    app.instruction.value = "make it warmer"
    app.apply_button.click()
    app.timing.value               # "student: 12 ms ..."

Models:

* ``student`` - the shipped grid student (lesson 03), at full resolution. *Grid cells*
  re-samples its predicted ``(12, D, G, G)`` grid to ``(12, D, c, c)`` spatial cells with
  ``F.interpolate`` before slicing (:func:`resample_grid`: area averaging to shrink,
  bilinear with ``align_corners=False`` to grow - cell centres sit at ``(k + 0.5) / c`` of the
  image, the convention slicing uses). Fewer cells make the edit smoother and more global
  (1 x 1: one tone curve per colour transform for the whole photo); more cells only
  interpolate the prediction - no new detail - and cost the slicing nothing extra.
* ``teacher`` - the diffusion teacher (lesson 04): DDIM with few steps at its working size,
  upscaled back. The embedded teacher works at 32 x 32 px (blurry: it is what the student learns
  from, not a finished editor); ``studio --teacher hub`` uses InstructPix2Pix at 512 px (shorter
  side; a GPU makes it interactive). ``strength`` blends: ``out = in + s (edit - in)``.
* ``Inverse-and-Edit`` - ``course_lib.inversion.edit_image(image, source_instruction,
  instruction)`` when that module and function exist; otherwise the option is shown
  disabled with a note.

``python -m course_lib studio`` serves the same app as a standalone page through Voila
(see :func:`main`): bound to 127.0.0.1 unless ``--host`` says otherwise, with an upload
size limit (``--max-upload-mb``). On any other address it asks for a token, as Jupyter does: a
random one unless ``--token`` sets it, printed in the URL to open; a request without it is
refused (``--no-token`` turns this off, with a warning). Everything is served locally, with no request leaving the
machine: the page uses the course's own Voila template ``course-studio``
(``course_lib/jupyter/voila/templates/``, found through ``JUPYTER_PATH``), Voila's "lab"
template without the Font Awesome stylesheet it links from a CDN (the studio has no icons).
The browser test fails on any request that is not to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import config, world
from ..fastslice import retouch_pass
from ..data import resize
from ..images import ImageError, load_image, save_image, to_uint8
from ..student import interpret, load_student, retouch_fused, understood_line
from ..teacher import add_teacher_options, load_teacher

#: Default upload limit (MB = 2**20 bytes); ``python -m course_lib studio --max-upload-mb``.
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Environment variable through which the command passes the limit to the served notebook.
UPLOAD_ENV = "COURSE_STUDIO_MAX_UPLOAD_MB"
#: The studio command passes ``--teacher`` / ``--teacher-path`` to the Voila kernel through these.
TEACHER_ENV, TEACHER_PATH_ENV = "COURSE_STUDIO_TEACHER", "COURSE_STUDIO_TEACHER_PATH"
#: Spatial grid cells offered (the shipped student predicts 16 x 16).
GRID_CELLS = (1, 2, 4, 8, 16, 32, 64)
#: DDIM steps of the teacher in the studio (few: it runs on a CPU while you wait).
TEACHER_STEPS = 8
#: Results up to this size (PNG bytes) are offered as a data-URI link; larger ones are written to a file.
MAX_DATA_URI_BYTES = 8 * 2**20
STUDENT, TEACHER, INVERSE = "student", "teacher", "Inverse-and-Edit"


class StudioError(ImageError):
    """A one-line, user-facing problem (bad upload, model not available)."""


# ----------------------------------------------------------------------------- inputs


def decode_upload(content: bytes | memoryview, name: str, max_bytes: int) -> torch.Tensor:
    """Decode an uploaded file with :func:`course_lib.images.load_image` (all its checks).

    Args:
        content: the file's bytes.
        name: its name (for messages and the format's suffix).
        max_bytes: refuse larger files.

    Returns:
        (3, H, W) float32 in [0, 1], upright.

    Raises:
        StudioError: too large, empty, or not a readable image (one line, naming the file).
    """
    data = bytes(content)
    label = Path(name).name or "upload"
    if len(data) > max_bytes:
        raise StudioError(f"{label}: {len(data) / 2**20:.1f} MB is more than the {max_bytes / 2**20:g} MB upload limit")
    if not data:
        raise StudioError(f"{label}: empty file")
    suffix = Path(label).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""
    fd, tmp = tempfile.mkstemp(prefix="course-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_image(tmp)
    except ImageError as exc:
        raise StudioError(str(exc).replace(tmp, label)) from None
    finally:
        os.unlink(tmp)


def upload_entries(value: Any) -> list[tuple[str, bytes]]:
    """``(name, content)`` of each file in a ``FileUpload.value`` (ipywidgets 8 tuple or 7 dict)."""
    if isinstance(value, dict):  # ipywidgets 7: {name: {"metadata": ..., "content": ...}}
        return [(k, bytes(v["content"])) for k, v in value.items()]
    return [(str(v["name"]), bytes(v["content"])) for v in (value or ())]


# ----------------------------------------------------------------------------- edits


def resample_grid(grid: torch.Tensor, cells: int) -> torch.Tensor:
    """Re-sample an affine grid to ``cells x cells`` spatial cells (intensity bins kept).

    Args:
        grid: (B, 12, D, Hg, Wg).
        cells: c >= 1.

    Returns:
        (B, 12, D, c, c). Fewer cells: area averaging (each new cell is the mean of the old cells
        it covers). More cells: bilinear with ``align_corners=False`` (cell centres at
        ``(k + 0.5) / c`` of the image, the convention slicing uses), i.e. the same smooth edit
        sampled more densely.
    """
    B, K, D, Hg, Wg = grid.shape
    if cells < 1:
        raise ValueError(f"cells must be >= 1, got {cells}")
    if (Hg, Wg) == (cells, cells):
        return grid
    flat = grid.reshape(B, K * D, Hg, Wg)  # the bins ride along as channels
    if cells < min(Hg, Wg):
        # shrink: each new cell is the mean of the cells it covers (1 x 1: one curve for the photo)
        out = F.interpolate(flat, size=(cells, cells), mode="area")
    else:
        # grow: bilinear between cell centres, which sit at (k + 0.5) / c of the image
        out = F.interpolate(flat, size=(cells, cells), mode="bilinear", align_corners=False)
    return out.reshape(B, K, D, cells, cells)


@torch.no_grad()
def edit_student(model, image: torch.Tensor, instruction: str, strength: float = 1.0,
                 cells: int | None = None) -> torch.Tensor:
    """The student's edit at full resolution, optionally with a re-sampled grid.

    Args:
        model: a :class:`course_lib.student.Student`.
        image: (3, H, W) in [0, 1].
        instruction: the edit (empty: unchanged).
        strength: >= 0.
        cells: spatial cells of the grid (``None``: as predicted, ``G``).

    Returns:
        (3, H, W) in [0, 1], on the CPU.
    """
    if not instruction.strip():
        return image.clone()
    x = image[None].to(model.device, torch.float32)  # (1, 3, H, W)
    if cells is None:  # the retouch command's pipeline: one pass over the pixels
        return retouch_fused(model, x, model.embed([instruction]), strength).cpu()[0]
    grid = resample_grid(model.predict_grid(x, model.embed([instruction]), strength), int(cells))  # (1, 12, D, c, c)
    return retouch_pass(grid, x, model.guide).cpu()[0]


def blend(image: torch.Tensor, edited: torch.Tensor, strength: float) -> torch.Tensor:
    """``image + s (edited - image)``, clipped: strength for models without one."""
    if edited.dim() == 4:
        edited = edited[0]
    if edited.shape[-2:] != image.shape[-2:]:
        edited = F.interpolate(edited[None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (image + float(strength) * (edited.float().cpu() - image)).clamp(0, 1)


@torch.no_grad()
def edit_teacher(teacher, image: torch.Tensor, instruction: str, strength: float = 1.0,
                 steps: int = TEACHER_STEPS, seed: int = 0) -> torch.Tensor:
    """The diffusion teacher's edit (at its working size, upscaled back), blended by strength.

    Args:
        teacher: a :class:`course_lib.teacher.Teacher`.
        image: (3, H, W) in [0, 1].
        steps: DDIM steps. seed: seeds the initial noise.

    Returns:
        (3, H, W) in [0, 1].
    """
    if not instruction.strip():
        return image.clone()
    return blend(image, teacher.edit(image, instruction, steps=steps, seed=seed), strength)


def inversion_edit_fn() -> Callable | None:
    """``course_lib.inversion.edit_image`` if that module exists and has it, else ``None``."""
    try:
        module = importlib.import_module("course_lib.inversion")
    except Exception:  # missing, or broken while someone is writing it
        return None
    fn = getattr(module, "edit_image", None)
    return fn if callable(fn) else None


# ----------------------------------------------------------------------------- views


def to_preview(image: torch.Tensor, width: int) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (h, w, 3) uint8 with w <= ``width`` (aspect kept)."""
    if image.shape[-1] > width:
        image = resize(image, (max(1, round(image.shape[-2] * width / image.shape[-1])), width))
    return to_uint8(image)


def compose_view(before: np.ndarray, after: np.ndarray, split: float = 0.5, mode: str = "split") -> np.ndarray:
    """Before/after in one picture.

    Args:
        before, after: (h, w, 3) uint8, the same size.
        split: ``"split"`` mode: the fraction of the width that shows *before* (left).
        mode: ``"split"`` (one picture, a white line at the split) or ``"side by side"``.

    Returns:
        (h, w, 3) or (h, 2 w + 4, 3) uint8.
    """
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    h, w, _ = before.shape
    if mode == "side by side":
        gap = np.full((h, 4, 3), 255, np.uint8)
        return np.concatenate([before, gap, after], axis=1)
    if mode != "split":
        raise ValueError(f"mode must be 'split' or 'side by side', not {mode!r}")
    cut = int(round(min(max(split, 0.0), 1.0) * w))
    out = after.copy()
    out[:, :cut] = before[:, :cut]
    if 0 < cut < w:
        out[:, max(0, cut - 1):cut + 1] = 255  # the split line
    return out


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """(h, w, 3) uint8 -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def download_html(image: torch.Tensor, filename: str, max_data_uri_bytes: int = MAX_DATA_URI_BYTES,
                  folder: str | os.PathLike | None = None) -> str:
    """An HTML download link for the full-resolution result.

    Args:
        image: (3, H, W) in [0, 1].
        filename: the name the browser saves it as (``.png``).
        max_data_uri_bytes: larger PNGs are written to ``folder`` instead and their path shown.
        folder: default ``config.OUTPUT_DIR / "studio"``.

    Returns:
        HTML: ``<a download=... href="data:image/png;base64,...">`` or the written file's path.
    """
    h, w = image.shape[-2:]
    data = png_bytes(to_uint8(image), compress_level=3)
    name = html.escape(filename)
    if len(data) <= max_data_uri_bytes:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return (f'<a download="{name}" href="{uri}" class="studio-download-link">Download the full-resolution '
                f'result</a> ({w} x {h} PNG, {len(data) / 1024:.0f} kB)')
    out = Path(folder) if folder is not None else config.OUTPUT_DIR / "studio"
    path = save_image(image, out / filename, overwrite=True)
    return f"Full-resolution result ({w} x {h}) written to <code>{html.escape(str(path))}</code>"


@dataclass
class EditResult:
    """One edit: ``image`` (3, H, W) in [0, 1], ``seconds`` the model's time, ``details`` for the label."""

    image: torch.Tensor
    seconds: float
    model: str
    details: str


# ----------------------------------------------------------------------------- the app


class Studio:
    """The studio's widgets and their callbacks (see the module docstring).

    Args:
        model: a student (default: the shipped one, loaded now).
        photo: the bundled photo shown first.
        max_upload_bytes: uploads larger than this are refused with a message.
        teacher_loader: returns the teacher when first needed (default ``load_teacher(teacher, teacher_path)``).
        teacher, teacher_path: the tier (``"embedded"`` or ``"hub"``) and its checkpoint / pipeline
            folder (default: the ``studio`` command's ``--teacher`` / ``--teacher-path``, else embedded).
        teacher_steps: DDIM steps of the teacher.
        inversion: the Inverse-and-Edit function; default :func:`inversion_edit_fn` (``None`` if absent).
        preview_width: width of the on-screen picture (the edit itself is full resolution).

    Attributes:
        ui: the ``ipywidgets.VBox`` to display.
        photo, upload, instruction, strength, cells, model_choice, source_instruction, apply_button,
        split, view_mode, view, timing, status, download, note: the widgets.
        source: the current photo, (3, H, W) full resolution. result: the last :class:`EditResult`.
    """

    def __init__(self, model=None, photo: str = "chelsea", max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
                 teacher_loader: Callable[[], Any] | None = None, teacher_steps: int = TEACHER_STEPS,
                 inversion: Callable | None | str = "auto", preview_width: int = 512, teacher: str | None = None,
                 teacher_path: str | None = None) -> None:
        import ipywidgets as W

        if model is None:
            model = load_student(device=config.device())
        self.student = model
        # load the text encoder and the slicing kernels now, so that the first timing is the edit's alone
        edit_student(model, torch.full((3, 8, 8), 0.5), "make it warmer")
        self.max_upload_bytes = int(max_upload_bytes)
        self.teacher_steps = int(teacher_steps)
        self._teacher_loader = teacher_loader
        self._teacher = None
        self.teacher_tier = teacher or os.environ.get(TEACHER_ENV) or "embedded"
        self.teacher_path = teacher_path or os.environ.get(TEACHER_PATH_ENV) or None
        self.inversion = inversion_edit_fn() if inversion == "auto" else inversion
        self.preview_width = int(preview_width)
        self.sources: dict[str, torch.Tensor] = {}
        self._quiet = False
        self.result: EditResult | None = None
        self.source_name = photo
        G = model.cfg.grid_size

        layout = W.Layout(width="auto")
        self.photo = W.Dropdown(options=world.photo_names(), value=photo, description="photo")
        self.upload = W.FileUpload(accept="image/*", multiple=False,
                                   description=f"upload (max {self.max_upload_bytes / 2**20:g} MB)",
                                   layout=W.Layout(width="auto"))
        self.instruction = W.Text(value="make it warmer and lift the shadows", description="instruction",
                                  continuous_update=False, layout=W.Layout(width="32em"))
        self.strength = W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="strength",
                                      continuous_update=False)
        self.cells = W.Dropdown(options=[(f"{c} x {c}" + (" (as predicted)" if c == G else ""), c) for c in GRID_CELLS],
                                value=G, description="grid cells")
        models = [STUDENT, TEACHER] + ([INVERSE] if self.inversion is not None else [])
        self.model_choice = W.ToggleButtons(options=models, value=STUDENT, description="model")
        self.inverse_unavailable = W.ToggleButton(value=False, description=INVERSE, disabled=True,
                                                  tooltip="not available: needs course_lib.inversion.edit_image",
                                                  layout=W.Layout(display="none" if self.inversion else ""))
        self.inverse_note = W.HTML("" if self.inversion else
                                   "<i>Inverse-and-Edit: not available (needs "
                                   "<code>course_lib.inversion.edit_image</code>)</i>")
        self.source_instruction = W.Text(value="a photo", description="source prompt", continuous_update=False,
                                         layout=W.Layout(width="32em", display="none"))
        self.apply_button = W.Button(description="Apply", button_style="primary")
        self.split = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="before | after",
                                   readout_format=".0%", style={"description_width": "initial"})
        self.view_mode = W.ToggleButtons(options=["split", "side by side"], value="split", description="view")
        self.view = W.Image(format="png", layout=W.Layout(max_width="100%", align_self="flex-start"))
        self.timing = W.HTML("")
        self.understood = W.HTML("")  # what the student read from the instruction (if it has the heads)
        self.alternatives = W.HBox([])  # close readings, one click each (the instruction becomes that edit's)
        self.status = W.HTML("")
        self.download = W.HTML("")
        self.note = W.HTML("")
        for w, cls in ((self.photo, "photo"), (self.upload, "upload"), (self.instruction, "instruction"),
                       (self.strength, "strength"), (self.cells, "cells"), (self.model_choice, "model"),
                       (self.apply_button, "apply"), (self.view, "view"), (self.timing, "timing"),
                       (self.status, "status"), (self.download, "download"), (self.split, "split"),
                       (self.understood, "understood"), (self.alternatives, "alternatives")):
            w.add_class(f"studio-{cls}")

        self.photo.observe(self._on_photo, names="value")
        self.upload.observe(self._on_upload, names="value")
        for w in (self.instruction, self.strength, self.cells):
            w.observe(self._on_setting, names="value")
        self.model_choice.observe(self._on_model, names="value")
        self.apply_button.on_click(lambda _: self.apply())
        self.split.observe(lambda _: self.render(), names="value")
        self.view_mode.observe(lambda _: self.render(), names="value")

        self.ui = W.VBox([
            W.HTML("<h3>InstantRetouch studio</h3>"),
            W.HBox([self.photo, self.upload], layout=layout),
            self.instruction, self.understood, self.alternatives, self.source_instruction,
            W.HBox([self.strength, self.cells]),
            W.HBox([self.model_choice, self.inverse_unavailable, self.inverse_note]),
            self.note,
            W.HBox([self.apply_button, self.timing]),
            self.status,
            W.HBox([self.view_mode, self.split]),
            self.view,
            self.download,
        ])
        self._set_source(photo, world.load_photo(photo))
        self._on_model()

    @classmethod
    def from_env(cls, **kwargs) -> "Studio":
        """A studio whose upload limit comes from ``COURSE_STUDIO_MAX_UPLOAD_MB`` (set by ``main``)."""
        mb = float(os.environ.get(UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB))
        return cls(max_upload_bytes=int(mb * 2**20), **kwargs)

    def _ipython_display_(self) -> None:  # display(Studio()) shows the app
        from IPython.display import display

        display(self.ui)

    # ------------------------------------------------------------------ callbacks
    def _set_source(self, name: str, image: torch.Tensor) -> None:
        self.sources[name] = image
        self.source_name = name
        self.source = image
        self.result = None
        self.download.value = ""
        self.timing.value = ""
        self.render()

    def _on_photo(self, change=None) -> None:
        if self._quiet:
            return
        name = self.photo.value
        if name in self.sources:
            self._set_source(name, self.sources[name])
        else:
            self._set_source(name, world.load_photo(name))
        self._auto_apply()

    def _on_upload(self, change=None) -> None:
        entries = upload_entries(self.upload.value)
        if not entries:
            return
        name, content = entries[0]
        try:
            image = decode_upload(content, name, self.max_upload_bytes)
        except StudioError as exc:
            self.status.value = f'<span style="color:#b00">error: {html.escape(str(exc))}</span>'
            return
        finally:
            self.upload.value = ()  # forget the bytes; the same file can be chosen again
        label = f"uploaded: {Path(name).name}"
        self.sources[label] = image
        self.status.value = f"{html.escape(Path(name).name)}: {image.shape[-1]} x {image.shape[-2]}"
        options = [o for o in self.photo.options if o != label] + [label]
        self._quiet = True  # changing the options may touch the value: no edits until the new photo is set
        try:
            self.photo.options = options
        finally:
            self._quiet = False
        if self.photo.value == label:
            self._on_photo()
        else:
            self.photo.value = label  # -> _on_photo

    def _on_setting(self, change=None) -> None:
        self._auto_apply()

    def _on_model(self, change=None) -> None:
        m = self.model_choice.value
        self.cells.disabled = m != STUDENT
        self.source_instruction.layout.display = "" if m == INVERSE else "none"
        if m == TEACHER:
            what = ("the embedded diffusion teacher edits a <b>32 x 32 px</b> copy" if self.teacher_tier != "hub"
                    else "InstructPix2Pix (hub tier) edits a copy whose shorter side is <b>512 px</b>")
            self.note.value = (f"<i>teacher: {what} with {self.teacher_steps} DDIM steps, upscaled back to the "
                               f"photo's size{' (blurry)' if self.teacher_tier != 'hub' else ''}; "
                               f"strength blends with the original. Press Apply.</i>")
        elif m == INVERSE:
            self.note.value = ("<i>Inverse-and-Edit: invert the photo to noise under the source prompt, regenerate "
                               "it under the instruction (course_lib.inversion). Press Apply.</i>")
        else:
            self.note.value = ("<i>student: the shipped grid student at full resolution; changes apply at once. "
                               "Grid cells re-samples its predicted grid before slicing.</i>")
        self._auto_apply()

    def _auto_apply(self) -> None:
        """The student is fast: it re-applies on every change. The others wait for Apply."""
        if self.model_choice.value == STUDENT:
            self.apply()

    # ------------------------------------------------------------------ actions
    def teacher(self):
        """The diffusion teacher, loaded on first use."""
        if self._teacher is None:
            if self._teacher_loader is not None:
                self._teacher = self._teacher_loader()
            else:
                self._teacher = load_teacher(self.teacher_tier, self.teacher_path, device=config.device())
        return self._teacher

    def edit(self) -> EditResult:
        """Run the chosen model on the current photo with the current settings (no widgets touched)."""
        m, text, s = self.model_choice.value, self.instruction.value, float(self.strength.value)
        H, W = self.source.shape[-2:]
        if m == STUDENT:
            t0 = time.perf_counter()
            text = self.reading()["apply_text"] if self.reading() else text  # unsure: the edit it applies
            out = edit_student(self.student, self.source, text, s, cells=int(self.cells.value))
            G = int(self.cells.value)
            return EditResult(out, time.perf_counter() - t0, m,
                              f"{W} x {H} px, grid {G} x {G} x {self.student.cfg.luma_bins}")
        if m == TEACHER:
            teacher = self.teacher()  # loading is not part of the timing
            t0 = time.perf_counter()
            out = edit_teacher(teacher, self.source, text, s, steps=self.teacher_steps)
            th, tw = teacher.working_size(H, W) if hasattr(teacher, "working_size") else (32, 32)
            return EditResult(out, time.perf_counter() - t0, m,
                              f"{self.teacher_steps} DDIM steps at {tw} x {th} px, upscaled to {W} x {H}")
        if m == INVERSE:
            if self.inversion is None:
                raise StudioError("Inverse-and-Edit is not available (needs course_lib.inversion.edit_image)")
            t0 = time.perf_counter()
            edited = self.inversion(self.source, self.source_instruction.value, text)
            out = blend(self.source, torch.as_tensor(edited), s) if text.strip() else self.source.clone()
            return EditResult(out, time.perf_counter() - t0, m, f"{W} x {H} px")
        raise StudioError(f"unknown model {m!r}")

    def reading(self) -> dict | None:
        """:func:`course_lib.student.interpret` of the instruction (cached per text), or ``None`` when the
        student has no "understood as" heads, another model is chosen or the instruction is empty."""
        text = self.instruction.value
        if self.model_choice.value != STUDENT or not text.strip() or not getattr(self.student.cfg, "readout", ()):
            return None
        if getattr(self, "_reading", (None,))[0] != (id(self.student), text):
            self._reading = ((id(self.student), text), interpret(self.student, text))
        return self._reading[1]

    def understood_text(self) -> str:
        """The student's reading of the instruction (``"understood: sky warmer (+1.0)"``, with
        ``(not sure: applying "...")`` when it applies its most likely reading), or ""."""
        seen = self.reading()
        if seen is None:
            return ""
        line = understood_line(seen["readings"])
        return line + (f' (not sure: applying "{seen["apply_text"]}")' if seen["unsure"] else "")

    def _show_alternatives(self) -> None:
        """One button per close reading (at least 1 % likely); a click makes it the instruction."""
        import ipywidgets as W

        seen = self.reading()
        alts = [x for x in (seen or {}).get("alternatives", []) if x["p"] >= 0.01]

        def choose(instruction: str):
            return lambda _: setattr(self.instruction, "value", instruction)

        buttons = []
        for x in alts:
            b = W.Button(description=x["instruction"], tooltip=f"{x['line']}, p = {x['p']:.2f}",
                         layout=W.Layout(width="auto"))
            b.add_class("studio-alternative")
            b.on_click(choose(x["instruction"]))
            buttons.append(b)
        self.alternatives.children = ([W.HTML("<i>or did you mean:</i>")] + buttons) if buttons else []

    def apply(self) -> EditResult | None:
        """Edit, then update the view, the timing label and the download link. Errors go to the status line."""
        try:
            self.understood.value = f'<span class="studio-understood-text">{html.escape(self.understood_text())}</span>'
            self._show_alternatives()
            result = self.edit()
        except Exception as exc:  # an app must survive any model's failure: one line, the picture kept
            msg = " ".join(str(exc).split())[:300] or type(exc).__name__
            if not isinstance(exc, (StudioError, ValueError, RuntimeError)):
                msg = f"{type(exc).__name__}: {msg}"
            self.status.value = f'<span style="color:#b00">error: {html.escape(msg)}</span>'
            return None
        self.result = result
        self.status.value = ""
        self.timing.value = (f'<span class="studio-ms">{result.model}: {result.seconds * 1000:.0f} ms</span> '
                             f"({html.escape(result.details)})")
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.source_name.replace("uploaded: ", "")).stem)[:40]
        self.download.value = download_html(result.image, f"{stem}_retouched.png")
        self.render()
        return result

    def render(self) -> None:
        """Redraw the before/after picture (cheap: previews only)."""
        before = to_preview(self.source, self.preview_width)
        after = to_preview(self.result.image, self.preview_width) if self.result is not None else before
        self.view.value = png_bytes(compose_view(before, after, self.split.value, self.view_mode.value),
                                    compress_level=1)


# ----------------------------------------------------------------------------- the web page (Voila)

NOTEBOOK_SOURCE = """from course_lib.apps.studio import Studio

studio = Studio.from_env()
studio.ui"""


def write_notebook(folder: str | os.PathLike) -> Path:
    """Write the one-cell notebook Voila serves (imports the app and displays it)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_SOURCE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(folder) / "studio.ipynb"
    nbformat.write(nb, str(path))
    return path


def write_voila_config(folder: str | os.PathLike, max_upload_mb: float, token: str | None = None) -> Path:
    """Write ``voila.json`` next to the notebook (Voila reads it from its working directory).

    An upload travels to the kernel as one websocket message (tornado's default limit: 10 MiB), so
    the limit is raised well above ``max_upload_mb``: too-large files then reach the kernel and get
    a clear message instead of closing the connection. ``token``: every request must carry it
    (``?token=...`` once; the browser then keeps a cookie); ``None``: no token. The file is
    readable by its owner only, so the token never appears in a process list.
    """
    import json

    ws_limit = int(max(4 * max_upload_mb, max_upload_mb + 16) * 2**20)
    cfg = {"tornado_settings": {"websocket_max_message_size": ws_limit}, "port_retries": 0}
    if token is not None:
        cfg["token"] = token
    path = Path(folder) / "voila.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"Voila": cfg}, indent=1))
    return path


#: Addresses that only this machine can reach: no token by default there.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def studio_token(host: str, token: str | None, no_token: bool) -> str | None:
    """The token the studio asks for: ``token`` when given, none with ``no_token`` or on a local
    address, otherwise a fresh random one (``secrets.token_hex(24)``, 192 bits)."""
    import secrets

    if token is not None:
        return token
    if no_token or host in LOCAL_HOSTS:
        return None
    return secrets.token_hex(24)


def studio_url(host: str, port: int, token: str | None) -> str:
    """The address to open, with ``?token=`` when there is one (IPv6 hosts in brackets)."""
    name = "[" + host + "]" if ":" in host else host
    return f"http://{name}:{port}/" + (f"?token={token}" if token else "")


#: Where the course's Voila template lives (``<here>/voila/templates/course-studio``): prepended to
#: ``JUPYTER_PATH`` for the Voila process.
JUPYTER_DATA = Path(__file__).resolve().parent / "jupyter"
VOILA_TEMPLATE = "course-studio"


def voila_command(notebook: str | os.PathLike, host: str, port: int) -> list[str]:
    """The ``voila`` command line: no browser, the given address, the course's offline template
    (run it in the notebook's folder with :func:`voila_env`)."""
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--Voila.ip={host}", f"--port={port}",
            f"--template={VOILA_TEMPLATE}"]


def voila_env(max_upload_mb: float, base: dict | None = None) -> dict:
    """The Voila process's environment: the upload limit, and ``JUPYTER_PATH`` finding our template first."""
    env = dict(os.environ if base is None else base)
    env[UPLOAD_ENV] = f"{max_upload_mb:g}"
    env["JUPYTER_PATH"] = os.pathsep.join([str(JUPYTER_DATA)] + [p for p in [env.get("JUPYTER_PATH")] if p])
    return env


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``timeout``) behave like Ctrl-C, so that Voila is never orphaned."""
    import signal
    import threading

    def handler(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib studio``: serve the studio as a standalone page through Voila."""
    import shutil
    import subprocess

    p = argparse.ArgumentParser(prog="python -m course_lib studio",
                                description="Serve the retouching studio (pick or upload a photo, type an instruction, "
                                            "compare before/after, download the result) as a standalone web page "
                                            "with Voila. Offline; Ctrl-C stops it.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other address, e.g. 0.0.0.0, "
                        "asks for a token)")
    p.add_argument("--port", type=int, default=8866, help="port (default 8866)")
    p.add_argument("--token", default=None,
                   help="token every request must carry (default: a random one when --host is not local, printed "
                        "in the URL; none on 127.0.0.1)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token even on a non-local --host (anyone who reaches the port can use it)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"refuse uploaded photos larger than this many MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    add_teacher_options(p)
    a = p.parse_args(argv)
    if not (0 < a.port < 65536):
        print(f"error: --port must be in 1..65535, got {a.port}", file=sys.stderr)
        return 2
    if not (0 < a.max_upload_mb <= 1024):
        print(f"error: --max-upload-mb must be in (0, 1024], got {a.max_upload_mb}", file=sys.stderr)
        return 2
    if a.token is not None and (a.no_token or not re.fullmatch(r"[A-Za-z0-9_-]{8,}", a.token)):
        print("error: --token must be at least 8 letters, digits, '-' or '_', and cannot go with --no-token",
              file=sys.stderr)
        return 2
    if importlib.util.find_spec("voila") is None:
        print("error: voila is not installed (pip install voila, or run scripts/setup.sh)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="course-studio-"))
    try:
        nb = write_notebook(folder)
        token = studio_token(a.host, a.token, a.no_token)
        write_voila_config(folder, a.max_upload_mb, token)
        env = voila_env(a.max_upload_mb)
        env[TEACHER_ENV] = a.teacher
        if a.teacher_path:
            env[TEACHER_PATH_ENV] = str(Path(a.teacher_path).resolve()) if Path(a.teacher_path).exists() else a.teacher_path
        if a.host not in LOCAL_HOSTS and token is None:
            print(f"studio: warning: listening on {a.host} with --no-token: anyone who can reach this machine can "
                  "use the studio and its upload", file=sys.stderr)
        print(f"studio: serving on {studio_url(a.host, a.port, token)} "
              f"(upload limit {a.max_upload_mb:g} MB; Ctrl-C to stop)", flush=True)
        proc = subprocess.Popen(voila_command(nb, a.host, a.port), cwd=folder, env=env)
        _stop_on_sigterm()
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop Voila (it shuts its kernels down) and clean up
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["Studio", "StudioError", "EditResult", "decode_upload", "upload_entries", "resample_grid", "edit_student",
           "edit_teacher", "blend", "inversion_edit_fn", "to_preview", "compose_view", "png_bytes", "download_html",
           "write_notebook", "write_voila_config", "studio_token", "studio_url", "voila_command", "voila_env", "main"]
