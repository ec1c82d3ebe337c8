"""Packaging beyond pyproject.toml: every ``course_lib`` subpackage, found automatically, and the
shipped files of ``data/`` (weights, ...) carried in the wheel as ``course_lib/_data``.

``course_lib.config.SHIPPED_DIR`` reads ``data/`` in a checkout and ``course_lib/_data`` when
installed from a wheel (``%pip install`` on Colab), so both find the same files.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class CleanBuildPy(build_py):
    """Build from an empty ``build/lib/course_lib``: a file deleted from the checkout (a retired
    checkpoint, a removed module) must not reach the next wheel from an earlier build's copy."""

    def run(self):
        shutil.rmtree(Path(self.build_lib) / "course_lib", ignore_errors=True)
        super().run()


# Shipped, read-only files of data/ that an installed course needs (globs relative to data/).
# Add a pattern here when the repository starts shipping a new kind of file under data/.
SHIPPED = ["weights/*.safetensors", "weights/*.json", "weights/*.md", "photos/*.jpg", "photos/manifest.json", "results/*.json"]

setup(
    packages=find_packages(include=["course_lib", "course_lib.*"]) + ["course_lib._data"],
    package_dir={"course_lib._data": "data"},
    package_data={"course_lib": ["csrc/*.cpp", "recipes/*.yaml", "apps/jupyter/voila/templates/*/*"], "course_lib._data": SHIPPED},
    include_package_data=False,
    cmdclass={"build_py": CleanBuildPy},
)
