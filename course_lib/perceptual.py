"""LPIPS for the course: the real metric when its ImageNet backbone is on disk, an honest fallback otherwise.

LPIPS (Zhang et al. 2018, the ``lpips`` package) compares unit-normalised deep features of
two images, layer by layer, through learned 1x1 "linear" weights:

    d(x, y) = Σ_l  mean_hw  || w_l ⊙ (f̂_l(x) − f̂_l(y)) ||²,   f̂ = f / ||f||_channels

Two parts carry weights:

* the **linear layers** ship inside the ``lpips`` package (as pickled ``.pth``). The course
  converts them once into ``data/weights/lpips_vgg_lin.safetensors`` (:func:`export_linear_layers`,
  a tiny file) so that nothing is ever unpickled at run time;
* the **VGG-16 backbone** (ImageNet) does not ship with anything installed here. The hub tier
  reads torchvision's ImageNet VGG-16 as ported to safetensors by timm (``timm/vgg16.tv_in1k``
  on the Hugging Face hub) from the local Hugging Face cache, or downloads it with
  ``COURSE_ONLINE=1``.

Without the backbone, :func:`load_lpips` returns the **offline fallback**: the same network with a
seeded *random* VGG-16 backbone ("LPIPS-rand"). Random convolutional features still respond to
edges and texture at several scales, so it is a usable structural training loss, but it is **not**
the perceptual metric and every table and plot labels it as such (:attr:`Perceptual.label`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import config
from .util.hub import hf_file
from .util.checkpoint import load_checkpoint, save_checkpoint

#: timm's port of torchvision's ImageNet VGG-16 (safetensors) on the Hugging Face hub.
HUB_BACKBONE = "timm/vgg16.tv_in1k"
LIN_PATH = config.WEIGHTS_DIR / "lpips_vgg_lin.safetensors"
REAL_LABEL = "LPIPS (VGG, ImageNet)"
FALLBACK_LABEL = "LPIPS-rand (offline fallback: random VGG features, not the perceptual metric)"


class Perceptual(torch.nn.Module):
    """An ``lpips.LPIPS`` (VGG) with a label saying which backbone it has.

    Attributes:
        real: True when the backbone carries ImageNet weights.
        label: what to print next to every number it produces.
    """

    def __init__(self, net: torch.nn.Module, real: bool) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.real = bool(real)
        self.label = REAL_LABEL if real else FALLBACK_LABEL

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image.

        Args:
            x, y: (B, 3, H, W) in [0, 1] (H, W >= 16).

        Returns:
            (B,) LPIPS distances (0 = identical features). Differentiable in ``x`` and ``y``.
        """
        # lpips expects [-1, 1]
        return self.net(x * 2 - 1, y * 2 - 1, normalize=False).flatten()


def export_linear_layers(out: str | Path = LIN_PATH) -> Path:
    """Convert the ``lpips`` package's VGG linear layers to safetensors (run once, by the repo's maintainers).

    Reads ``lpips/weights/v0.1/vgg.pth`` with ``torch.load(weights_only=True)`` (tensors only) and
    writes ``out``. The shipped file was made by this function.
    """
    import lpips

    src = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    state = torch.load(src, map_location="cpu", weights_only=True)
    return save_checkpoint(out, {k: v.contiguous() for k, v in state.items()}, "lpips_lin", {"net": "vgg"},
                           {"source": "lpips 0.1 weights/v0.1/vgg.pth (BSD-2-Clause, Zhang et al. 2018)",
                            # converted, not trained: its recipe is the conversion (course_lib/recipes/lpips_vgg_lin.yaml)
                            "recipe": json.dumps({"command": "convert-lpips", "settings": {}, "init": None}),
                            "recipe_file": "lpips_vgg_lin.yaml"})


def _hub_backbone_file(repo: str = HUB_BACKBONE) -> str | None:
    """Path of the backbone's ``model.safetensors`` if cached (or downloadable with COURSE_ONLINE=1)."""
    if Path(repo).is_file():
        return str(repo)
    return hf_file(repo, "model.safetensors")


def load_backbone_into(net: torch.nn.Module, path: str) -> None:
    """Copy a timm/torchvision VGG-16 state (``features.N.weight``) into lpips's sliced VGG.

    lpips splits torchvision's ``features`` into ``slice1..slice5`` keeping the layer indices,
    so ``features.N.*`` maps to ``sliceK.N.*``. Raises ``KeyError`` when a layer is missing.
    """
    from safetensors.torch import load_file

    state = load_file(path)
    own = dict(net.net.named_parameters())
    with torch.no_grad():
        for name, p in own.items():  # e.g. slice2.5.weight
            key = "features." + name.split(".", 1)[1]
            if key not in state or state[key].shape != p.shape:
                raise KeyError(f"backbone file {path} has no matching {key}")
            p.copy_(state[key])


def load_lpips(backbone: str | None = None, seed: int = 0) -> Perceptual:
    """LPIPS-VGG: the real metric when the ImageNet backbone is available, the labelled fallback otherwise.

    Args:
        backbone: a VGG-16 ``.safetensors`` file or hub repo (default :data:`HUB_BACKBONE`,
            looked up in the local cache; downloaded only with ``COURSE_ONLINE=1``).
        seed: seeds the random backbone of the fallback (so it is the same network every run).

    Returns:
        A :class:`Perceptual`; check ``.real`` / ``.label``.
    """
    import warnings

    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes about its deprecated 'pretrained' argument
        torch.manual_seed(seed)
        net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    if not LIN_PATH.is_file():
        raise FileNotFoundError(f"missing {LIN_PATH} (run course_lib.perceptual.export_linear_layers())")
    lin, _ = load_checkpoint(LIN_PATH, "lpips_lin")
    net.load_state_dict({**net.state_dict(), **lin})
    path = _hub_backbone_file(backbone or HUB_BACKBONE)
    real = False
    if path is not None:
        load_backbone_into(net, path)
        real = True
    return Perceptual(net, real)
