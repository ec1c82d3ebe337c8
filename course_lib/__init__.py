"""course_lib: the library the InstantRetouch course builds, lesson by lesson.

Lesson ↔ module:
    00 tour            -> config, data, world, grammar, oracle, images, checks, nbtools
    01 bilateral grid  -> bilateral
    02 fast slicing    -> fastslice
See README.md for the full map.
"""
from . import config as _config

# Before any Hugging Face library is imported: stay offline unless COURSE_ONLINE=1.
_config.apply_offline_env()

__version__ = "0.1.0"
