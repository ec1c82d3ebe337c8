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
