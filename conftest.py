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


#: Files whose tests share nothing (no module fixture): one work unit per test, spread over both workers.
SPLIT = ("tests/test_multirank.py",)
#: The longest work units start first, so that no worker is left alone with one at the end (CPU
#: seconds with one thread, measured on the 2-core machine: lesson 07 130, each multi-rank trainer
#: ~30, lesson 08 66, the wheel, tests/test_recipes.py 35, test_inversion.py 32, test_gpu_check.py 29).
#: The other units follow in xdist's order (most tests first).
FIRST = ("lesson 07", "tests/test_multirank.py", "tests/test_wheel.py", "lesson 08", "tests/test_recipes.py",
         "tests/test_inversion.py", "tests/test_gpu_check.py", "tests/test_hub_tier.py")


def _work_unit(nodeid: str) -> str:
    """``tests/test_x.py`` for a test, ``lesson NN`` for a cell of ``solutions|notebooks/NN*.ipynb``."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".ipynb"):
        return f"lesson {name[:2]}"
    return nodeid if path in SPLIT else path


def _rank(unit: str) -> int:
    return next((i for i, first in enumerate(FIRST) if unit.startswith(first)), len(FIRST))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LessonScheduling(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def _assign_work_unit(self, node):
            if not self.ordered:  # the queue is complete before the first unit is handed out
                units = sorted(self.workqueue.items(), key=lambda kv: _rank(kv[0]))  # stable: xdist's order within
                self.workqueue.clear()
                self.workqueue.update(units)
                self.ordered = True
            super()._assign_work_unit(node)

    return LessonScheduling(config, log)
