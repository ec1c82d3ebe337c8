"""Packaging beyond pyproject.toml: every ``course_lib`` subpackage, found automatically, and the
shipped files of ``data/`` (weights, ...) carried in the wheel as ``course_lib/_data``.

``course_lib.config.SHIPPED_DIR`` reads ``data/`` in a checkout and ``course_lib/_data`` when
installed from a wheel (``%pip install`` on Colab), so both find the same files.
"""
from setuptools import find_packages, setup

# Shipped, read-only files of data/ that an installed course needs (globs relative to data/).
# Add a pattern here when the repository starts shipping a new kind of file under data/.
SHIPPED = ["weights/*.safetensors", "weights/*.json", "weights/*.md", "photos/*.jpg", "photos/manifest.json", "results/*.json"]

setup(
    packages=find_packages(include=["course_lib", "course_lib.*"]) + ["course_lib._data"],
    package_dir={"course_lib._data": "data"},
    package_data={"course_lib": ["csrc/*.cpp", "recipes/*.yaml", "apps/jupyter/voila/templates/*/*"], "course_lib._data": SHIPPED},
    include_package_data=False,
)
