"""Shared test settings (FAST mode, deterministic seeds) and tiny offline teachers."""
import hashlib
import os

os.environ.setdefault("COURSE_MODE", "fast")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class HashText:
    """A stand-in text encoder: a fixed random unit vector per text (no model to load)."""

    dim = 384

    def encode(self, texts):
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16))
            v = torch.randn(self.dim, generator=g)
            rows.append(v / v.norm())
        return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny_teacher():
    """A 16x16 embedded teacher with random (non-identity) output, hashed text."""
    from course_lib.teacher import EmbeddedTeacher, build_embedded_unet

    torch.manual_seed(0)
    unet = build_embedded_unet(resolution=16, channels=(8, 16))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)  # a fresh UNet starts at "no edit"; make it do something
    return EmbeddedTeacher(unet, text_encoder=HashText())


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    """A tiny InstructPix2Pix pipeline built from configs, saved and loaded offline: (teacher, folder)."""
    from course_lib import config
    from course_lib.teacher import load_hub_teacher, make_tiny_pipeline

    folder = tmp_path_factory.mktemp("ip2p")
    make_tiny_pipeline(folder / "src").save_pretrained(folder / "pipe")
    with config.no_network():
        return load_hub_teacher(folder / "pipe", device="cpu"), folder / "pipe"
