"""Settings for every pytest run of this repository (tests/, and nbval over solutions/ and notebooks/).

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadfile``) on a 2-core
machine. Each worker and everything it starts (commands, ranks, notebook kernels) uses one torch
thread. A work unit is one test file (its module fixtures are built once), except that all the
notebooks of lesson NN (solutions/, notebooks/ and its lab notes) are one unit, run one after
another in the usual order: they share written paths such as outputs/teacher_demo.
"""
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"  # inherited by subprocesses and kernels; tests that set threads still do
    import torch

    torch.set_num_threads(1)


def _work_unit(nodeid: str) -> str:
    """``tests/test_x.py`` for a test, ``lesson NN`` for a cell of ``solutions|notebooks/NN*.ipynb``."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    return f"lesson {name[:2]}" if name.endswith(".ipynb") else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LessonScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return LessonScheduling(config, log)
