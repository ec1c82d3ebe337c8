"""Small plotting helpers shared by the lessons (matplotlib only)."""
from __future__ import annotations

from typing import Sequence

import torch


def to_hwc(img: torch.Tensor):
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] -> (H, W, 3) NumPy array for imshow."""
    x = img.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    if x.dim() == 2:
        return x.clamp(0, 1).numpy()
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def show_images(images: Sequence[torch.Tensor], titles: Sequence[str] | None = None, ncols: int | None = None,
                size: float = 3.0, suptitle: str | None = None, cmap: str | None = None):
    """Show images in a grid and return the figure.

    Args:
        images: (3, H, W) colour or (H, W) single-channel tensors, values in [0, 1].
        titles: one title per image (long ones are wrapped).
        ncols: columns (default: all in one row, at most 5).
        size: inches per panel.
        suptitle: a title over the figure (e.g. to label a fallback honestly).
    """
    import textwrap

    import matplotlib.pyplot as plt

    n = len(images)
    ncols = ncols or min(n, 5)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(to_hwc(images[k]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title("\n".join(textwrap.wrap(str(titles[k]), 28)), fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def particle_panels(runs: dict, log_density, extent: float = 4.0, size: float = 2.4):
    """Lesson 05's 2-D toy: one row per method, one panel per snapshot; the particles over the
    teacher's density contours. Returns the figure.

    Args:
        runs: method name -> result of :func:`course_lib.vsd_toy.distil` (``history``: (step, (N, 2))).
        log_density: ``(M, 2) -> (M,)`` the target's log-density (e.g. ``Mixture.log_density``).
        extent: the panels show [-extent, extent]².
    """
    import matplotlib.pyplot as plt

    axis = torch.linspace(-extent, extent, 120)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    dens = log_density(torch.stack([gx.flatten(), gy.flatten()], 1)).exp().reshape(120, 120)
    ncols = max(len(r["history"]) for r in runs.values())
    fig, axes = plt.subplots(len(runs), ncols, figsize=(size * ncols, size * len(runs)), squeeze=False)
    for row, (name, r) in zip(axes, runs.items()):
        for ax, (step, x) in zip(row, r["history"]):
            ax.contour(gx, gy, dens, levels=6, colors="0.7", linewidths=0.7)
            ax.scatter(x[:, 0], x[:, 1], s=3, color="C3" if name.lower().startswith("sds") else "C0")
            ax.set_xlim(-extent, extent), ax.set_ylim(-extent, extent)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name}, step {step}", fontsize=9)
        for ax in row[len(r["history"]):]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def alignment_plot(rows: Sequence[dict], title: str = "first VSD gradient vs the true edit"):
    """Lesson 05's diagnostic: cosine of ``-grad`` with the true edit per timestep range
    (rows of :func:`course_lib.distill.gradient_alignment`). Returns the figure."""
    import matplotlib.pyplot as plt

    mid = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3))
    ax.errorbar(mid, [r["pixel"] for r in rows], yerr=[r["pixel_std"] for r in rows], marker="o", capsize=3,
                label="per pixel (± std over items, draws)")
    ax.plot(mid, [r["colour"] for r in rows], marker="s", label="mean colour")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("timestep t"), ax.set_ylabel("cosine with target - source"), ax.set_ylim(-1, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def change_map(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Where an edit changed the photo: ``|output - source|`` summed over channels, (3, H, W) -> (H, W)."""
    return (output.detach().float().cpu() - source.detach().float().cpu()).abs().sum(0)


def change_masks(source: torch.Tensor, target: torch.Tensor, outputs: dict[str, torch.Tensor],
                 instruction: str = "", size: float = 2.4):
    """One row of lesson 03's content-aware check: the photo, what the ground truth changed, and
    what each method changed, drawn as change maps on one colour scale (brighter = more change).

    Args:
        source, target: (3, H, W) in [0, 1].
        outputs: method name -> (3, H, W) output.
        instruction: shown over the photo.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    maps = {"ground truth": change_map(target, source)} | {k: change_map(v, source) for k, v in outputs.items()}
    vmax = max(float(maps["ground truth"].max()), 1e-3)  # the truth's largest change sets the scale
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(size * (1 + len(maps)), size))
    axes[0].imshow(to_hwc(source))
    axes[0].set_title(instruction, fontsize=8, wrap=True)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(m.numpy(), cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"changed: {name}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _box(ax, x: float, y: float, text: str, width: float = 1.5, height: float = 0.6, color: str = "#dde8f5"):
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                facecolor=color, edgecolor="#333333", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", color: str = "#333333",
           offset: tuple[float, float] = (0.0, 0.18), style: str = "-|>"):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": style, "color": color, "lw": 1.2})
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha="center",
                va="center", fontsize=7, color=color)


def cycle_diagram(boundaries: Sequence[int] = (19, 259, 519, 779, 999)):
    """Lesson 07's cycle: the photo goes up the inverter's steps to noise, down the frozen
    generator's steps back to a photo, and the loss compares the two ends.

    Args:
        boundaries: the n-step schedule's timesteps, 19 ... 999 (iCD's by default).

    Returns:
        the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    b = list(boundaries)
    n = len(b) - 1
    blue, green, red = "#1f5fa8", "#2e7d32", "#b22222"
    w, gap = 1.15, 2.3
    xs = [0.9 + gap * k for k in range(n + 1)]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    # top row: F, the inverter, steps up
    for k, x in enumerate(xs):
        end = k in (0, n)
        _box(ax, x, 2.3, ("photo x" if k == 0 else "noise z") + f"\nt={b[k]}" if end else f"z\nt={b[k]}", w,
             color="#f5e6d3" if end else "#dde8f5")
        if k < n:
            _arrow(ax, (x + w / 2 + 0.05, 2.3), (xs[k + 1] - w / 2 - 0.05, 2.3), f"F at t={b[k]}", blue,
                   offset=(0, 0.22))
    # bottom row: G, the frozen generator, steps down (x_hat under the photo)
    for k in range(n):
        _box(ax, xs[k], 0.7, "x̂ = G(F(x))" if k == 0 else f"z\nt={b[k]}", w,
             color="#f5e6d3" if k == 0 else "#e6f2e0")
    _arrow(ax, (xs[n], 2.3 - 0.35), (xs[n - 1] + w / 2 + 0.05, 0.7 + 0.1), f"G at t={b[n]}", green,
           offset=(0.45, 0.0))
    for k in range(n - 1, 0, -1):
        _arrow(ax, (xs[k] - w / 2 - 0.05, 0.7), (xs[k - 1] + w / 2 + 0.05, 0.7),
               f"G at t={b[k]}" + (" → x̂0" if k == 1 else ""), green, offset=(0, -0.3))
    _arrow(ax, (xs[0], 0.7 + 0.35), (xs[0], 2.3 - 0.35), "", red, style="<|-|>")
    ax.text(xs[0] + 0.15, 1.5, "cycle loss\nLPIPS + pixels", ha="left", va="center", fontsize=8, color=red)
    ax.text((xs[0] + xs[n]) / 2, 2.95, f"trainable inverter F (the teacher + a LoRA): {n} DDIM-inversion steps up",
            ha="center", fontsize=8, color=blue)
    ax.text((xs[0] + xs[n - 1]) / 2, 0.05, f"frozen generator G: {n} DDIM steps down; the loss's gradient passes "
            "through G into F's LoRA only", ha="center", fontsize=8, color=green)
    ax.set_xlim(0, xs[-1] + 0.9)
    ax.set_ylim(-0.1, 3.1)
    ax.axis("off")
    fig.tight_layout()
    return fig


def consistency_figure(boundaries: Sequence[int] = (19, 259, 519, 779, 999), fine: Sequence[int] | None = None,
                       segment: int = 1):
    """Lesson 07's forward consistency model on a multi-boundary schedule: every point of a
    teacher trajectory inside one segment maps to the same point at the segment's end.

    Draws a schematic trajectory (timestep on x, a 1-D stand-in for the latent on y), the segment
    boundaries, the fine solver grid, and for one segment the arrows ``f(z_t, t) -> z_{b_{k+1}}``
    and the consistency pair ``(z_n, z_{n+1})`` of :func:`course_lib.inversion.forward_cd_loss`.

    Returns:
        the matplotlib figure.
    """
    import math

    import matplotlib.pyplot as plt
    b = list(boundaries)
    fine = list(fine) if fine is not None else [int(round(b[0] + (b[-1] - b[0]) * k / 50)) for k in range(51)]
    traj = lambda t: 0.5 * math.sin(t / 170.0) + t / 700.0  # a schematic ODE path
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ts = list(range(b[0], b[-1] + 1, 5))
    ax.plot(ts, [traj(t) for t in ts], color="#555555", lw=1.5, label="teacher's ODE trajectory (DDIM-inversion)")
    for t in b:
        ax.axvline(t, color="#1f5fa8", lw=1, ls="--")
    ax.plot(fine, [traj(t) for t in fine], "|", color="#999999", ms=8, label="fine solver grid")
    lo, hi = b[segment], b[segment + 1]
    end = (hi, traj(hi))
    pts = [t for t in fine if lo <= t < hi][::3]
    for t in pts:
        ax.annotate("", xy=end, xytext=(t, traj(t)),
                    arrowprops={"arrowstyle": "-|>", "color": "#1f5fa8", "lw": 1.0})
    inside = [t for t in fine if lo <= t < hi]
    t_n = inside[len(inside) // 2]
    t_next = fine[fine.index(t_n) + 1]
    ax.plot([t_n, t_next], [traj(t_n), traj(t_next)], "o", color="#b22222", ms=5,
            label="z_n and the teacher's step z_n+1: f must agree")
    ax.plot(*end, "s", color="#1f5fa8", ms=7, label=f"segment end: f(z, {hi}) = z")
    ax.set_xticks(b)
    ax.set_xlabel("timestep t (inversion goes right)")
    ax.set_yticks([])
    ax.set_title(f"forward consistency model: within [{lo}, {hi}] every point maps to the segment's end", fontsize=9)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def _diagram(size: tuple[float, float], xlim: tuple[float, float], ylim: tuple[float, float]):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=size)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def bilateral_grid_3d(cells: tuple[int, int, int] = (4, 4, 4), pixel: tuple[float, float] = (0.62, 0.38),
                      guide: float = 0.55, image=None):
    """Lesson 01's bilateral grid in 3-D: the photo lies in the (x, y) plane, the grid's third axis
    is the guide (luma); one pixel at ``(x, y)`` with guide value ``g`` is *lifted* to the point
    ``(x, y, g)`` of the grid and its transform is the trilinear blend of the 8 cells around it.

    Args:
        cells: (Wg, Hg, D) grid cells per axis.
        pixel: the pixel's (x, y) in [0, 1]; guide: its guide value in [0, 1].
        image: optional (3, H, W) photo drawn as the floor of the grid.

    Returns:
        the matplotlib figure.
    """
    import itertools

    import matplotlib.pyplot as plt
    import numpy as np

    wg, hg, d = cells
    fig = plt.figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot(projection="3d", computed_zorder=False)  # draw order = call order: the photo first
    if image is not None:  # the photo as the floor z = 0
        img = to_hwc(image)
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:1:complex(0, h), 0:1:complex(0, w)]
        ax.plot_surface(xx, 1 - yy, np.zeros_like(xx), facecolors=img, rstride=max(1, h // 48),
                        cstride=max(1, w // 48), shade=False, alpha=0.85, zorder=0)
    # the lattice of cell centres ((i + 0.5)/Wg, (j + 0.5)/Hg, (k + 0.5)/D): lesson 01's convention, as lines
    xs, ys, zs = (np.arange(wg) + 0.5) / wg, (np.arange(hg) + 0.5) / hg, (np.arange(d) + 0.5) / d
    for y, z in itertools.product(ys, zs):
        ax.plot(xs, [y] * wg, [z] * wg, color="#9aaecf", lw=0.6)
    for x, z in itertools.product(xs, zs):
        ax.plot([x] * hg, ys, [z] * hg, color="#9aaecf", lw=0.6)
    for x, y in itertools.product(xs, ys):
        ax.plot([x] * d, [y] * d, zs, color="#9aaecf", lw=0.6)
    px, py = pixel
    # the 8 cell centres around (x, y, g): the weights are products of (1 − distance) per axis
    fx, fy, fz = px * wg - 0.5, py * hg - 0.5, guide * d - 0.5
    i0, j0, k0 = (int(np.clip(np.floor(v), 0, n - 2)) for v, n in ((fx, wg), (fy, hg), (fz, d)))
    corners = [(i0 + a, j0 + b, k0 + c) for a, b, c in itertools.product((0, 1), repeat=3)]
    for i, j, k in corners:
        wgt = max(1 - abs(fx - i), 0) * max(1 - abs(fy - j), 0) * max(1 - abs(fz - k), 0)
        ax.scatter([xs[i]], [ys[j]], [zs[k]], s=20 + 200 * max(wgt, 0), color="#1f5fa8", depthshade=False)
        ax.plot([xs[i], px], [ys[j], py], [zs[k], guide], color="#1f5fa8", lw=0.5, ls=":")
    ax.scatter([px], [py], [0], s=30, color="#b22222", depthshade=False)
    ax.plot([px, px], [py, py], [0, guide], color="#b22222", lw=1.5)
    ax.scatter([px], [py], [guide], s=50, color="#b22222", marker="*", depthshade=False)
    ax.text(px, py, -0.08, "pixel (x, y)", color="#b22222", fontsize=8)
    ax.text(px + 0.03, py, guide + 0.05, f"lifted to (x, y, g = {guide:.2f})", color="#b22222", fontsize=8)
    ax.set(xlabel="x (grid cells)", ylabel="y (grid cells)", zlabel="guide g (luma bins)",
           xlim=(0, 1), ylim=(0, 1), zlim=(0, 1))
    ax.set_title(f"a {wg}x{hg}x{d} bilateral grid: each dot holds a 3x4 colour transform;\n"
                 "a pixel's transform blends the 8 dots around its lifted point\n(trilinear weights: dot size)",
                 fontsize=9)
    ax.view_init(elev=18, azim=-60)
    fig.tight_layout()
    return fig


def student_diagram(cfg=None):
    """Lesson 03's student as a block diagram with the tensor shapes of ``cfg`` (default: the
    shipped student's :class:`course_lib.student.StudentConfig`; any object with its fields works).

    Returns:
        the matplotlib figure.
    """
    n = getattr(cfg, "net_size", 128)
    g = getattr(cfg, "grid_size", 16)
    d = getattr(cfg, "luma_bins", 8)
    c = getattr(cfg, "channels", 64)
    labels = len(getattr(cfg, "readout", ()) or ()) or 49
    fig, ax = _diagram((11, 5.0), (0, 11), (0, 5.2))
    blue, green, orange, grey = "#dde8f5", "#e6f2e0", "#f5e6d3", "#eeeeee"
    # text branch
    _box(ax, 1.0, 4.5, "instruction\n(string)", 1.5, 0.6, orange)
    _box(ax, 3.1, 4.5, "MiniLM (frozen) 384\n+ word indicators", 1.9, 0.6, grey)
    _box(ax, 5.4, 4.5, f"text MLP -> 'understood as'\nheads: p, s  (B, {labels}) each", 2.3, 0.6, blue)
    _box(ax, 8.0, 4.5, f"edit code c = [1(p≥τ), 1(p≥τ)·s]\n(B, {2 * labels})", 2.4, 0.6, blue)
    _arrow(ax, (1.75, 4.5), (2.15, 4.5))
    _arrow(ax, (4.05, 4.5), (4.25, 4.5))
    _arrow(ax, (6.55, 4.5), (6.8, 4.5))
    # low-resolution image branch
    _box(ax, 1.0, 2.9, "photo\n(B, 3, H, W)", 1.5, 0.6, orange)
    _box(ax, 3.1, 2.9, f"resize\n(B, 3, {n}, {n})", 1.5, 0.6, grey)
    _box(ax, 5.2, 2.9, f"splat: stride-2 convs\n+ FiLM(c)  (B, {c}, {g}, {g})", 2.1, 0.6, green)
    _box(ax, 7.3, 3.45, f"local: [feat, y, x, r²]\n3x3 convs (B, {c}, {g}, {g})", 1.9, 0.6, green)
    _box(ax, 7.3, 2.35, f"global: convs + FC\n(B, {c})", 1.9, 0.6, green)
    _box(ax, 9.5, 2.9, f"fuse: act(FiLM(c)(l + g))\n1x1 head -> grid\n(B, 12, {d}, {g}, {g})", 2.0, 0.8, blue)
    _arrow(ax, (1.75, 2.9), (2.35, 2.9))
    _arrow(ax, (3.85, 2.9), (4.15, 2.9))
    _arrow(ax, (6.25, 3.05), (6.35, 3.35))
    _arrow(ax, (6.25, 2.75), (6.35, 2.45))
    _arrow(ax, (8.25, 3.4), (8.5, 3.1))
    _arrow(ax, (8.25, 2.4), (8.5, 2.7))
    _arrow(ax, (8.0, 4.2), (5.5, 3.2), "FiLM: scale and shift", "#555555", offset=(0.6, 0.15))
    _arrow(ax, (8.6, 4.2), (9.4, 3.3), "", "#555555")
    # full-resolution branch
    _box(ax, 3.1, 1.0, "guide = curves(photo)\n(B, H, W), full res", 1.9, 0.6, blue)
    _box(ax, 6.3, 1.0, "slice: grid at (x, y, guide)\n-> A (B, 12, H, W)", 2.2, 0.6, blue)
    _box(ax, 9.5, 1.0, "apply: out = A·[rgb, 1]\n(B, 3, H, W)", 2.0, 0.6, orange)
    _arrow(ax, (1.0, 2.6), (2.2, 1.2))
    _arrow(ax, (4.05, 1.0), (5.2, 1.0))
    _arrow(ax, (9.5, 2.5), (7.2, 1.3), "grid", "#333333", offset=(0.2, 0.15))
    _arrow(ax, (7.4, 1.0), (8.5, 1.0))
    ax.text(5.5, 0.25, f"the network only sees {n}x{n} pixels; at full resolution the work is the guide, the slice and "
            "one 3x4 transform per pixel", ha="center", fontsize=8, color="#555555")
    fig.tight_layout()
    return fig


def teacher_conditioning_diagram(resolution: int = 32):
    """Lesson 04's teacher: how the photo and the instruction condition the UNet, and the
    two-scale classifier-free guidance that combines three of its predictions.

    Returns:
        the matplotlib figure.
    """
    r = resolution
    fig, ax = _diagram((11, 4.6), (0, 11), (0, 4.8))
    blue, green, orange, grey = "#dde8f5", "#e6f2e0", "#f5e6d3", "#eeeeee"
    _box(ax, 1.0, 4.1, f"noisy edit x_t\n(B, 3, {r}, {r})", 1.5, 0.6, orange)
    _box(ax, 1.0, 3.1, f"source photo\n(B, 3, {r}, {r})", 1.5, 0.6, orange)
    _box(ax, 3.0, 3.6, f"concatenate\n(B, 6, {r}, {r})", 1.5, 0.6, grey)
    _box(ax, 1.0, 1.9, "instruction", 1.5, 0.5, orange)
    _box(ax, 3.0, 1.9, "MiniLM (frozen)\n(B, 1, 384)", 1.5, 0.6, grey)
    _box(ax, 1.0, 0.9, "timestep t", 1.5, 0.5, orange)
    _box(ax, 3.0, 0.9, "sinusoid + MLP\n+ proj(text)", 1.5, 0.6, grey)
    _box(ax, 5.6, 2.5, "UNet\nResNet blocks (t-embedding added)\ncross-attention to the text token",
         2.6, 1.1, green)
    _box(ax, 8.5, 3.3, "x̂0 = source + UNet(...)\n(residual x0 form)", 2.2, 0.6, blue)
    _box(ax, 8.5, 2.2, "ε̂ = (x_t − √ᾱ_t x̂0) / √(1−ᾱ_t)", 2.4, 0.5, blue)
    for a, b in (((1.75, 4.0), (2.25, 3.7)), ((1.75, 3.2), (2.25, 3.5)), ((3.75, 3.5), (4.3, 2.9)),
                 ((1.75, 1.9), (2.25, 1.9)), ((3.75, 1.9), (4.3, 2.3)), ((1.75, 0.9), (2.25, 0.9)),
                 ((3.75, 1.0), (4.3, 2.1)), ((6.9, 2.8), (7.4, 3.2)), ((8.5, 3.0), (8.5, 2.45))):
        _arrow(ax, a, b)
    _arrow(ax, (3.0, 2.2), (3.0, 1.2), "", "#777777")
    ax.text(8.5, 1.2, "classifier-free guidance, three predictions per step:\n"
            "ε = ε(∅, ∅) + s_I [ε(src, ∅) − ε(∅, ∅)] + s_T [ε(src, text) − ε(src, ∅)]\n"
            "(s_I = s_T = 1 needs only ε(src, text): one call)", ha="center", va="center", fontsize=8,
            bbox={"boxstyle": "round", "fc": "#fff8e1", "ec": "#999999"})
    ax.text(5.6, 4.55, "InstructPix2Pix in pixels: the photo enters as extra input channels, the words by attention",
            ha="center", fontsize=8, color="#555555")
    fig.tight_layout()
    return fig


def vsd_loop_diagram():
    """Lesson 05's VSD loop: the student edits, the edit is noised, the frozen teacher and the
    fake score (trained on the student's own edits) judge it, and their difference is the
    student's gradient; no ground truth anywhere.

    Returns:
        the matplotlib figure.
    """
    fig, ax = _diagram((11, 4.6), (0, 11), (0, 4.8))
    blue, green, orange, red = "#dde8f5", "#e6f2e0", "#f5e6d3", "#f8d7d7"
    _box(ax, 1.0, 3.6, "photo + instruction\n(training; no target)", 1.7, 0.6, orange)
    _box(ax, 3.1, 3.6, "student G_θ\n(one pass)", 1.4, 0.6, blue)
    _box(ax, 5.0, 3.6, "edit x0 = G_θ(photo)\n(teacher's size)", 1.8, 0.6, orange)
    _box(ax, 7.2, 3.6, "noise it: t ~ U[t_min, t_max]\nx_t = √ᾱ_t x0 + √(1−ᾱ_t) ε", 2.3, 0.6, "#eeeeee")
    _box(ax, 9.6, 4.3, "teacher ε_real(x_t)\nfrozen, with CFG", 1.8, 0.6, green)
    _box(ax, 9.6, 2.9, "fake score ε_fake(x_t)\nteacher + LoRA φ", 1.8, 0.6, red)
    _box(ax, 4.9, 1.6, "grad = w(t) (ε_real − ε_fake)\nloss = ½‖x0 − sg(x0 − grad)‖²", 2.6, 0.7, blue)
    _box(ax, 1.6, 1.6, "Adam step on θ\n(∂loss/∂x0 = grad)", 1.9, 0.6, blue)
    _box(ax, 9.6, 0.7, "Adam step(s) on φ: denoising loss\non the student's (detached) edits", 2.6, 0.6, red)
    _arrow(ax, (1.85, 3.6), (2.4, 3.6))
    _arrow(ax, (3.8, 3.6), (4.1, 3.6))
    _arrow(ax, (5.9, 3.6), (6.05, 3.6))
    _arrow(ax, (8.35, 3.75), (8.7, 4.2))
    _arrow(ax, (8.35, 3.45), (8.7, 3.0))
    _arrow(ax, (9.3, 4.0), (5.6, 1.95), "", "#2e7d32")
    _arrow(ax, (9.3, 2.6), (6.1, 1.95), "", "#b22222")
    _arrow(ax, (3.6, 1.6), (2.55, 1.6))
    _arrow(ax, (1.8, 1.9), (2.9, 3.3), "update the student", "#1f5fa8", offset=(-0.8, 0.1))
    _arrow(ax, (5.2, 3.3), (8.3, 0.95), "x0 (detached)", "#b22222", offset=(0.55, 0.0))
    _arrow(ax, (9.6, 1.0), (9.6, 2.6), "φ tracks the student", "#b22222", offset=(0.85, 0.0))
    ax.text(5.5, 0.15, "ε_real pulls the edit towards what the teacher would make; ε_fake pushes it away from what the "
            "student already makes (SDS uses the sampled ε instead: mode seeking)", ha="center", fontsize=8,
            color="#555555")
    fig.tight_layout()
    return fig


#: The course map: lesson -> (library modules, shipped weights), drawn by :func:`course_map`.
COURSE_MAP: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("00 tour", ("world", "oracle", "metrics"), ()),
    ("01 bilateral grid", ("bilateral", "images"), ()),
    ("02 fast slicing", ("fastslice", "triton_slice", "csrc/"), ()),
    ("03 student", ("student", "text", "train/student", "eval/world"),
     ("student_supervised", "student_global_affine")),
    ("04 teacher", ("teacher", "train/teacher", "eval/teacher"), ("teacher_embedded",)),
    ("05 VSD", ("distill", "vsd_toy", "train/vsd"), ("student_vsd_scratch",)),
    ("06 alignment", ("align", "train/align"), ("edit_clip",)),
    ("07 inversion", ("inversion", "train/inverter", "eval/inversion"), ("inverter_lora", "lpips_vgg_lin")),
    ("08 benchmark", ("bench", "eval/bench_retouch", "eval/score"), ()),
    ("09 studio", ("apps/studio", "apps/retouch", "video"), ()),
)


def course_map(rows=COURSE_MAP, weights_dir=None):
    """The README's one-screen course map: lessons -> library modules -> shipped weights.

    Args:
        rows: ``(lesson, modules, weights)`` triples (default :data:`COURSE_MAP`).
        weights_dir: if given, weights missing there are drawn greyed and marked "(not shipped)".

    Returns:
        the matplotlib figure.
    """
    from pathlib import Path

    n = len(rows)
    fig, ax = _diagram((11, 0.55 * n + 1.0), (0, 11), (-0.6, n + 0.2))
    ax.text(1.2, n - 0.05, "lesson (notebooks/)", ha="center", fontsize=9, weight="bold")
    ax.text(5.0, n - 0.05, "library (course_lib/)", ha="center", fontsize=9, weight="bold")
    ax.text(9.0, n - 0.05, "shipped weights (data/weights/)", ha="center", fontsize=9, weight="bold")
    for k, (lesson, modules, weights) in enumerate(rows):
        y = n - 1 - k
        _box(ax, 1.2, y, lesson, 1.9, 0.5, "#f5e6d3")
        _box(ax, 5.0, y, ", ".join(modules), 3.8, 0.5, "#dde8f5")
        _arrow(ax, (2.2, y), (3.05, y))
        if weights:
            names = []
            for w in weights:
                missing = weights_dir is not None and not (Path(weights_dir) / f"{w}.safetensors").is_file()
                names.append(w + (" (not shipped)" if missing else ""))
            text = ", ".join(names)
            if len(text) > 50:  # two lines: the box is 3.4 units wide
                half = (len(names) + 1) // 2
                text = ", ".join(names[:half]) + ",\n" + ", ".join(names[half:])
            _box(ax, 9.0, y, text, 3.4, 0.5 if "\n" not in text else 0.7, "#e6f2e0")
            _arrow(ax, (6.95, y), (7.25, y))
    ax.text(5.5, -0.5, "solutions/ is the single source: `python -m course_lib notebooks` writes notebooks/ from it; "
            "every lesson imports the library it shows", ha="center", fontsize=8, color="#555555")
    fig.tight_layout()
    return fig
