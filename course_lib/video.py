"""Retouching video: temporally stable grids (lesson 09).

A video is a sequence of frames ``F_0, F_1, ...``. Editing each frame on its own works,
but the student looks at every frame afresh: when the content moves, its predicted grid
moves too, a little differently each frame, and the edit *flickers* (the colour of the
edit jumps from frame to frame). The grid is small - ``(12, D, G, G)``, 24 576 numbers for
the shipped student - so we can smooth *it* over time instead of the pixels::

    g_t    = predict_grid(F_t, text, strength)          (1, 12, D, G, G)   per frame
    gs_0   = g_0
    gs_t   = a * gs_{t-1} + (1 - a) * g_t               exponential moving average, a = smoothing
    out_t  = slice_apply(gs_t, guide(F_t), F_t)         (1, 3, H, W)       per frame, own guide

The guide is each frame's own (it follows the pixels exactly), only the colour transforms
are smoothed. ``a = 0`` is per-frame editing; ``a -> 1`` freezes the first frame's edit. The
EMA is causal (it only looks back), so frames are processed as a stream: a long clip never
has to fit in memory. The price is lag: after a cut, the edit needs about ``1 / (1 - a)``
frames to catch up.

Clips are read and written by :mod:`course_lib.apps.clips` (frame folders, GIFs, MP4 & co.);
this module works on tensors: (T, 3, H, W) float32 in [0, 1], or a stream of (3, H, W) frames.

Measuring flicker (:func:`flicker`): the per-frame mean colour of the *edit*
``e_t = mean_pixels(out_t - in_t)`` (3 numbers, in 8-bit levels) should change slowly; its
mean frame-to-frame jump ``mean_t |e_t - e_{t-1}|`` is the flicker metric. It ignores the
motion of the content itself (which changes the input as much as the output).
"""
from __future__ import annotations

import time
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import config
from .bilateral import LumaGuide, fit_bgu, identity_grid, slice_apply
from .data import resize
from .world import load_photo

# ----------------------------------------------------------------------------- a demo clip


def make_demo_clip(photo_name: str = "coffee", n_frames: int = 24,
                   size: int | tuple[int, int] = (96, 128)) -> torch.Tensor:
    """A small pan-and-zoom clip over a photo of the collection (a camera drifting across a still scene).

    The crop window starts at the left of the photo covering 85% of its height and ends at
    the right covering 60% (a slow zoom in), sampled bilinearly (with antialiasing, so the
    frames do not shimmer on their own).

    Args:
        photo_name: one of :func:`course_lib.world.photo_names`.
        n_frames: T >= 1.
        size: ``(H, W)`` of the frames, or an int for square frames.

    Returns:
        (T, 3, H, W) float32 in [0, 1].
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    H, W = (size, size) if isinstance(size, int) else size
    photo = load_photo(photo_name)  # (3, Hp, Wp)
    Hp, Wp = photo.shape[-2:]
    # downsample the photo once so that the crops are only mildly resampled (no aliasing)
    scale = min(1.0, 2.0 * H / (0.6 * Hp))
    if scale < 1.0:
        photo = F.interpolate(photo[None], scale_factor=scale, mode="bilinear", align_corners=False,
                              antialias=True)[0]
        Hp, Wp = photo.shape[-2:]
    frames = []
    for t in range(n_frames):
        u = t / max(1, n_frames - 1)  # 0 -> 1
        ch = (0.85 - 0.25 * u) * Hp  # crop height in photo pixels: zoom in
        cw = min(Wp, ch * W / H)  # same aspect as the frames
        ch = cw * H / W
        cx = cw / 2 + u * (Wp - cw)  # pan left -> right
        cy = Hp / 2
        # normalised affine sampling grid: x_src = cx + (x_dst - 0.5) cw (in [-1, 1] units)
        theta = torch.tensor([[cw / Wp, 0.0, 2 * cx / Wp - 1], [0.0, ch / Hp, 2 * cy / Hp - 1]],
                             dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, 3, H, W], align_corners=False)
        frames.append(F.grid_sample(photo[None], grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)[0])
    return torch.stack(frames).clamp(0, 1)


# ----------------------------------------------------------------------------- grids over time


def ema_step(previous: torch.Tensor | None, grid: torch.Tensor, smoothing: float) -> torch.Tensor:
    """One step of the exponential moving average of grids.

    Args:
        previous: the smoothed grid of the previous frame (any shape), or ``None`` at t = 0.
        grid: this frame's grid, same shape.
        smoothing: a in [0, 1).

    Returns:
        ``a * previous + (1 - a) * grid`` (``grid`` itself at t = 0).
    """
    if previous is None:
        return grid
    # gs_t = a gs_{t-1} + (1 - a) g_t
    return smoothing * previous + (1.0 - smoothing) * grid


def check_smoothing(smoothing: float) -> float:
    """Validate the EMA factor: a float in [0, 1) (raises ``ValueError`` with one line)."""
    a = float(smoothing)
    if not (0.0 <= a < 1.0):
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return a


def smooth_grids(grids: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Exponential moving average of a sequence of grids along time (causal).

    Args:
        grids: (T, 12, D, Hg, Wg) per-frame grids (any (T, ...) works).
        smoothing: a in [0, 1); 0 returns the grids unchanged.

    Returns:
        (T, 12, D, Hg, Wg): ``out[0] = grids[0]``, ``out[t] = a out[t-1] + (1 - a) grids[t]``.
    """
    a = check_smoothing(smoothing)
    out = []
    prev = None
    for g in grids:
        prev = ema_step(prev, g, a)
        out.append(prev)
    return torch.stack(out)


@torch.no_grad()
def predict_grids(model, frames: torch.Tensor, instruction: str, strength: float = 1.0,
                  batch_size: int = 16) -> torch.Tensor:
    """The student's grid for every frame, independently.

    Args:
        model: a :class:`course_lib.student.Student`.
        frames: (T, 3, H, W) in [0, 1].
        instruction: one instruction for all frames.
        strength: >= 0.
        batch_size: frames per network call.

    Returns:
        (T, 12, D, G, G) on the CPU.
    """
    text = model.embed([instruction])  # (1, text_dim)
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = frames[i:i + batch_size].to(model.device, torch.float32)
        t = text.expand(x.shape[0], -1) if isinstance(text, torch.Tensor) else text  # (b, text_dim)
        out.append(model.predict_grid(x, t, strength).cpu())
    return torch.cat(out)


@torch.no_grad()
def apply_grids(model, frames: torch.Tensor, grids: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Slice and apply one grid per frame with the student's own guide.

    Args:
        model: the student whose learned guide is used.
        frames: (T, 3, H, W) in [0, 1].
        grids: (T, 12, D, G, G).

    Returns:
        (T, 3, H, W) in [0, 1], on the CPU.
    """
    outs = []
    for f, g in zip(frames, grids):
        x = f[None].to(model.device, torch.float32)
        guide = model.guide_map(x, rows_per_chunk=512)  # (1, H, W)
        outs.append(slice_apply(g[None].to(model.device), guide, x, impl=impl).clamp(0, 1).cpu()[0])
    return torch.stack(outs)


@torch.no_grad()
def retouch_stream(model, frames: Iterable[torch.Tensor], instruction: str, strength: float = 1.0,
                   smoothing: float = 0.0, impl: str = "auto") -> Iterator[torch.Tensor]:
    """Retouch a stream of frames with temporally smoothed grids (one frame in memory at a time).

    Args:
        model: a :class:`course_lib.student.Student`.
        frames: an iterable of (3, H, W) tensors in [0, 1] (e.g. :func:`course_lib.apps.clips.iter_frames`).
        instruction: the edit, for every frame.
        strength: >= 0 (0: unchanged).
        smoothing: EMA factor a in [0, 1) of the grids (0: per-frame edits).
        impl: slicing implementation (:func:`course_lib.bilateral.slice_apply`).

    Yields:
        (3, H, W) float32 in [0, 1] on the CPU, one per input frame.
    """
    a = check_smoothing(smoothing)
    model.eval()
    text = model.embed([instruction])  # (1, text_dim)
    smoothed = None
    for frame in frames:
        x = frame[None].to(model.device, torch.float32)  # (1, 3, H, W)
        grid = model.predict_grid(x, text, strength)  # (1, 12, D, G, G)
        smoothed = ema_step(smoothed, grid, a)
        guide = model.guide_map(x, rows_per_chunk=512)  # (1, H, W)
        yield slice_apply(smoothed, guide, x, impl=impl).clamp(0, 1).cpu()[0]


def retouch_clip(model, frames: torch.Tensor, instruction: str, strength: float = 1.0,
                 smoothing: float = 0.0, impl: str = "auto", progress: bool = True) -> torch.Tensor:
    """Retouch an in-memory clip (see :func:`retouch_stream`).

    Args:
        frames: (T, 3, H, W) in [0, 1].
        progress: show a progress bar (silent in FAST mode anyway).

    Returns:
        (T, 3, H, W) in [0, 1].
    """
    it = retouch_stream(model, frames, instruction, strength, smoothing, impl)
    it = config.progress(it, total=frames.shape[0], desc="frames", unit="frame") if progress else it
    return torch.stack(list(it))


# ----------------------------------------------------------------------------- flicker


def frame_change(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute change between consecutive frames, in 8-bit levels.

    Args:
        frames: (T, 3, H, W) in [0, 1], T >= 2.

    Returns:
        (T - 1,): ``255 * mean |F_t - F_{t-1}|`` over pixels and channels.
    """
    return (frames[1:] - frames[:-1]).abs().flatten(1).mean(1) * 255.0


def edit_colour(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Per-frame mean colour of the edit, in 8-bit levels.

    Args:
        inputs, outputs: (T, 3, H, W) in [0, 1].

    Returns:
        (T, 3): ``e_t = 255 * mean_pixels(out_t - in_t)`` per channel.
    """
    return (outputs - inputs).mean(dim=(2, 3)) * 255.0


def flicker(inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, float]:
    """How much an edit flickers over a clip.

    Args:
        inputs: (T, 3, H, W) the original frames in [0, 1], T >= 2.
        outputs: (T, 3, H, W) the edited frames.

    Returns:
        dict of floats, all in 8-bit levels:

        * ``edit_jump``: ``mean_t mean_c |e_t - e_{t-1}|`` with ``e`` from :func:`edit_colour`
          (the flicker metric: how much the edit's colour jumps per frame);
        * ``edit_std``: ``mean_c std_t e_t`` (how much the edit's colour varies over the clip);
        * ``excess_change``: ``mean frame_change(outputs) - mean frame_change(inputs)`` (extra
          frame-to-frame change the edit adds on top of the motion).
    """
    if inputs.shape != outputs.shape or inputs.dim() != 4 or inputs.shape[0] < 2:
        raise ValueError(f"need two (T, 3, H, W) clips with T >= 2, got {tuple(inputs.shape)} and "
                         f"{tuple(outputs.shape)}")
    e = edit_colour(inputs, outputs)  # (T, 3)
    return {
        "edit_jump": float((e[1:] - e[:-1]).abs().mean()),
        "edit_std": float(e.std(dim=0).mean()),
        "excess_change": float(frame_change(outputs).mean() - frame_change(inputs).mean()),
    }


@torch.no_grad()
def grid_flicker(model, frames: torch.Tensor, grids: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """The part of each frame-to-frame change that comes from the *grid* changing.

    Frame t is edited twice, with its own grid and with the previous frame's, and the two
    results compared; content motion cancels out (the same frame and guide in both), so a grid
    that does not change over time scores exactly 0.

    Args:
        model: provides ``guide_map`` (a student or :class:`TeacherGrids`).
        frames: (T, 3, H, W) in [0, 1], T >= 2.
        grids: (T, 12, D, G, G) the grids used for each frame (per-frame or smoothed).

    Returns:
        (T - 1,): ``255 * mean |slice(g_t, F_t) - slice(g_{t-1}, F_t)|``, 8-bit levels.
    """
    out = []
    for t in range(1, frames.shape[0]):
        x = frames[t:t + 1].to(model.device, torch.float32)
        guide = model.guide_map(x, rows_per_chunk=512)
        now = slice_apply(grids[t:t + 1].to(x.device), guide, x, impl=impl).clamp(0, 1)
        before = slice_apply(grids[t - 1:t].to(x.device), guide, x, impl=impl).clamp(0, 1)
        out.append((now - before).abs().mean() * 255.0)
    return torch.stack(out).cpu()


# ----------------------------------------------------------------------------- flicker against lag

#: the smoothing factors of lesson 09's study (FULL mode, ``python -m course_lib video-study``)
SMOOTHING_FACTORS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@torch.no_grad()
def smoothing_rows(model, frames: torch.Tensor, grids: torch.Tensor,
                   factors: Sequence[float] = SMOOTHING_FACTORS) -> list[dict]:
    """Flicker and lag of one predictor's grids, smoothed with each factor (lesson 09, section 2).

    Args:
        model: provides ``guide_map`` (a student or :class:`TeacherGrids`).
        frames: (T, 3, H, W) in [0, 1], T >= 2.
        grids: (T, 12, D, G, G) the per-frame grids.
        factors: EMA factors, each in [0, 1).

    Returns:
        one dict per factor, all in 8-bit levels: ``a``; ``edit_jump`` (:func:`flicker`);
        ``grid_flicker`` (mean of :func:`grid_flicker`); ``lag``, ``255 * mean |out_a - out_0|``,
        how far the smoothed edit is from the per-frame one.
    """
    factors = [check_smoothing(a) for a in factors]
    per_frame = apply_grids(model, frames, grids)  # (T, 3, H, W)
    rows = []
    for a in factors:
        g = smooth_grids(grids, a)  # (T, 12, D, G, G)
        out = apply_grids(model, frames, g)
        rows.append({"a": a, "edit_jump": flicker(frames, out)["edit_jump"],
                     "grid_flicker": float(grid_flicker(model, frames, g).mean()),
                     "lag": float((out - per_frame).abs().mean() * 255.0)})
    return rows


def smoothing_study(teacher, frames: torch.Tensor, instruction: str,
                    factors: Sequence[float] = SMOOTHING_FACTORS, steps: int = 8, seed: int = 0,
                    student=None) -> dict:
    """Lesson 09's trade-off on one clip: flicker against lag for each smoothing factor.

    The teacher edits every frame from fresh noise (:class:`TeacherGrids`, seeds ``seed, seed + 1,
    ...``) and its grids are smoothed with each factor; then the same teacher with the *same* noise
    for every frame, per frame; then, if given, the student with each factor.

    Args:
        teacher: a :class:`course_lib.teacher.Teacher` (e.g. ``load_teacher("embedded")``).
        frames: (T, 3, H, W) in [0, 1], T >= 2 (e.g. :func:`make_demo_clip`).
        instruction: one edit for all frames.
        factors: EMA factors in [0, 1).
        steps: DDIM steps per frame.
        seed: the first frame's noise seed.
        student: a :class:`course_lib.student.Student`, or ``None`` to leave its rows out.

    Returns:
        dict: ``teacher`` (rows of :func:`smoothing_rows`, fresh noise), ``same_noise``
        (``edit_jump`` and ``grid_flicker`` of the same-noise teacher, per frame), ``student``
        (rows, only with a student), ``frame_change`` (mean :func:`frame_change` of the clip,
        levels) and ``ms_per_frame`` (the fresh-noise teacher's grid prediction time).
    """
    if frames.dim() != 4 or frames.shape[0] < 2:
        raise ValueError(f"need a (T, 3, H, W) clip with T >= 2, got {tuple(frames.shape)}")
    factors = [check_smoothing(a) for a in factors]
    fresh = TeacherGrids(teacher, steps=steps, seed=seed, fresh_noise=True)
    t0 = time.perf_counter()
    grids = predict_grids(fresh, frames, instruction)  # (T, 12, D, 4, 4)
    ms = 1000.0 * (time.perf_counter() - t0) / frames.shape[0]
    result = {"frame_change": float(frame_change(frames).mean()), "ms_per_frame": ms,
              "teacher": smoothing_rows(fresh, frames, grids, factors)}
    fixed = TeacherGrids(teacher, steps=steps, seed=seed, fresh_noise=False)
    fixed_grids = predict_grids(fixed, frames, instruction)
    result["same_noise"] = {"edit_jump": flicker(frames, apply_grids(fixed, frames, fixed_grids))["edit_jump"],
                            "grid_flicker": float(grid_flicker(fixed, frames, fixed_grids).mean())}
    if student is not None:
        result["student"] = smoothing_rows(student, frames, predict_grids(student, frames, instruction), factors)
    return result


# ----------------------------------------------------------------------------- a flickering predictor


class TeacherGrids:
    """A per-frame grid predictor made of the diffusion teacher and BGU (a flickering baseline).

    For each frame: the embedded teacher edits a ``working size`` copy (32 px) with DDIM from
    noise, and Bilateral Guided Upsampling (lesson 01, :func:`course_lib.bilateral.fit_bgu`) fits
    a small affine grid that maps the copy to its edit; the grid is then sliced at full
    resolution with the luma guide. Fresh noise for every frame (``fresh_noise=True``) makes the
    edit wander from frame to frame - the flicker diffusion editors are known for - which is
    what :func:`smooth_grids` is for. It has the interface :func:`retouch_stream`,
    :func:`predict_grids`, :func:`apply_grids` and :func:`grid_flicker` use (``embed``,
    ``predict_grid``, ``guide_map``, ``device``, ``eval``).

    Args:
        teacher: a :class:`course_lib.teacher.Teacher` (e.g. ``load_teacher("embedded")``).
        steps: DDIM steps per frame.
        seed: seed of the initial noise.
        fresh_noise: new noise for every frame (seed, seed + 1, ...) instead of the same noise.
        grid_size: G, spatial cells per side of the fitted grid (a 32 px copy has few pixels per cell).
        luma_bins: D.
    """

    def __init__(self, teacher, steps: int = 4, seed: int = 0, fresh_noise: bool = True, grid_size: int = 4,
                 luma_bins: int = 8) -> None:
        self.teacher, self.steps, self.seed, self.fresh_noise = teacher, int(steps), int(seed), bool(fresh_noise)
        self.grid_size, self.luma_bins = int(grid_size), int(luma_bins)
        self.guide = LumaGuide()
        self.frames_seen = 0
        self.device = torch.device("cpu")

    def eval(self) -> "TeacherGrids":
        return self

    def embed(self, instructions: Sequence[str] | str) -> list[str]:
        """The teacher reads the text itself: the instructions are passed through as a list."""
        return [instructions] if isinstance(instructions, str) else list(instructions)

    def guide_map(self, image: torch.Tensor, rows_per_chunk: int | None = None) -> torch.Tensor:
        """Luma guide: (B, 3, H, W) -> (B, H, W) in [0, 1]."""
        return self.guide(image)

    @torch.no_grad()
    def predict_grid(self, image: torch.Tensor, text: Sequence[str], strength: float = 1.0) -> torch.Tensor:
        """Edit each image with the teacher, fit a grid to the edit.

        Args:
            image: (B, 3, H, W) in [0, 1].
            text: one instruction, or B (from :meth:`embed`).
            strength: ``grid = I + s (G - I)``.

        Returns:
            (B, 12, D, G, G).
        """
        texts = list(text)
        if len(texts) == 1:
            texts = texts * image.shape[0]
        grids = []
        for x, instruction in zip(image, texts):
            small = resize(x.float().cpu(), self.teacher.working_size(*x.shape[-2:]))  # (3, 32, 32)
            seed = self.seed + self.frames_seen if self.fresh_noise else self.seed
            self.frames_seen += 1
            edited = self.teacher.edit(small, instruction, steps=self.steps, seed=seed)  # (3, 32, 32)
            grids.append(fit_bgu(small[None], edited[None], self.guide(small[None]), D=self.luma_bins,
                                 Hg=self.grid_size, Wg=self.grid_size)[0])
        g = torch.stack(grids)
        eye = identity_grid(1, self.luma_bins, self.grid_size, self.grid_size)
        # G_s = I + s (G - I)
        return eye + float(strength) * (g - eye)


__all__ = ["make_demo_clip", "ema_step", "check_smoothing", "smooth_grids", "predict_grids", "apply_grids",
           "retouch_stream", "retouch_clip", "frame_change", "edit_colour", "flicker", "grid_flicker",
           "SMOOTHING_FACTORS", "smoothing_rows", "smoothing_study", "TeacherGrids"]
