"""Installed, not cloned: a wheel built from this repository carries every shipped weight and
works from any folder (as on Colab after ``%pip install "instantretouch-course @ git+..."``).

The wheel is installed with ``--no-deps`` into a fresh folder and run with the project's Python,
``PYTHONPATH`` pointing at the installed copy only (the dependencies come from the project's
environment; the editable checkout is shadowed and must not be used: asserted).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from course_lib import config, world

ROOT = config.REPO_ROOT

# One loader per shipped file (a new file under data/weights without a loader here fails the test).
LOADERS = {
    "student_supervised.safetensors": "student.load_student(W / name)",
    "student_global_affine.safetensors": "student.load_student(W / name)",
    "student_vsd_scratch.safetensors": "student.load_student(W / name)",
    "teacher_embedded.safetensors": "teacher.load_embedded_teacher(W / name, device='cpu')",
    "edit_clip.safetensors": "align.load_edit_clip(W / name)",
    "inverter_lora.safetensors": "inversion.load_inverter(W / name)",
    "lpips_vgg_lin.safetensors": "perceptual.load_lpips()",
}

SCRIPT = r"""
import sys
from pathlib import Path
import course_lib
from course_lib import config, student, teacher, align, inversion, perceptual
site = Path(sys.argv[1]).resolve()
assert Path(course_lib.__file__).resolve().is_relative_to(site), course_lib.__file__
assert not config.FROM_CHECKOUT
W = config.WEIGHTS_DIR
assert W.resolve().is_relative_to(site), W
names = sorted(p.name for p in W.glob("*.safetensors"))
print("shipped:", ",".join(names))
loaders = LOADERS
for name in names:
    m = eval(loaders[name])
    print("loaded", name, type(m).__name__)
from course_lib import world
assert world.PHOTO_DIR.resolve().is_relative_to(site), world.PHOTO_DIR
print("photos", len(world.photo_names()), tuple(world.load_photo(world.photo_names("test")[0], 32).shape[:1]))
from course_lib import oracle
print("oracle rows", len(oracle.shipped_result()["rows"]))
"""


def test_setup_py_finds_every_subpackage():
    """No package is listed by name: any ``course_lib`` subpackage with an __init__ ends up in the wheel."""
    src = (ROOT / "setup.py").read_text()
    assert "find_packages(" in src
    assert "packages = [" not in (ROOT / "pyproject.toml").read_text()


@pytest.mark.timeout(600)
def test_installed_wheel_is_self_contained(tmp_path):
    shipped = sorted(p.name for p in (ROOT / "data" / "weights").glob("*.safetensors"))
    missing = [n for n in shipped if n not in LOADERS]
    assert not missing, f"add a loader to LOADERS for {missing}"

    wheels = tmp_path / "wheels"
    # The build writes build/ and *.egg-info in the checkout (both git-ignored).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(wheels), str(ROOT)], check=True, timeout=300)
    (whl,) = wheels.glob("instantretouch_course-*.whl")
    with zipfile.ZipFile(whl) as z:
        members = set(z.namelist())
    for name in shipped:
        assert f"course_lib/_data/weights/{name}" in members, f"{name} is not in the wheel"
    assert "course_lib/csrc/bilateral_slice.cpp" in members
    for recipe in sorted((ROOT / "course_lib" / "recipes").glob("*.yaml")):  # python -m course_lib reproduce
        assert f"course_lib/recipes/{recipe.name}" in members, f"recipe {recipe.name} is not in the wheel"
    photos = sorted(p.name for p in (ROOT / "data" / "photos").iterdir())
    assert "manifest.json" in photos and len(photos) > 20
    for name in photos:
        assert f"course_lib/_data/photos/{name}" in members, f"photo {name} is not in the wheel"
    for name in sorted(p.name for p in (ROOT / "data" / "results").glob("*.json")):
        assert f"course_lib/_data/results/{name}" in members, f"results file {name} is not in the wheel"
    subpackages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "course_lib").rglob("__init__.py")}
    for sub in subpackages:
        assert f"{sub}/__init__.py" in members, f"subpackage {sub} is not in the wheel"

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                    "--disable-pip-version-check", "--target", str(site), str(whl)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURSE_") or k == "COURSE_MODE"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", HOME=str(tmp_path / "home"), PYTHONNOUSERSITE="1")

    script = SCRIPT.replace("loaders = LOADERS", f"loaders = {LOADERS!r}")
    proc = subprocess.run([sys.executable, "-c", script, str(site)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in shipped:
        assert f"loaded {name}" in proc.stdout
    assert f"photos {len(world.photo_names())} (3,)" in proc.stdout  # vendored + package photos
    assert f"oracle rows {len(world.WORLD_FAMILIES)}" in proc.stdout  # measured results ship too

    # retouch a photo with the installed package's shipped student, from a folder outside the repo
    import numpy as np
    from PIL import Image
    import skimage.data

    Image.fromarray(np.asarray(skimage.data.astronaut())[::4, ::4].copy()).save(work / "photo.png")
    proc = subprocess.run([sys.executable, "-m", "course_lib", "retouch", "photo.png", "-i", "make it warmer",
                           "-o", "out.png"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = np.asarray(Image.open(work / "out.png")).astype(float)
    src = np.asarray(Image.open(work / "photo.png")).astype(float)
    assert out.shape == src.shape
    # warmer: more red relative to blue than the source
    assert (out[..., 0] - out[..., 2]).mean() > (src[..., 0] - src[..., 2]).mean()
