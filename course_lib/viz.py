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
