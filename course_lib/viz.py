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
