"""``accelerate launch`` on a CPU machine starts real ranks the way the multi-process tests need.

Two processes talking over gloo need ``ACCELERATE_USE_CPU=1`` *and* ``--multi_gpu``:
``--cpu --num_processes 2`` starts one process, and without ``ACCELERATE_USE_CPU`` each of two
processes believes it is alone. Every trainer is run this way, with two ranks, in
``tests/test_multirank.py`` (the workshop recipe in the README uses the same command on GPUs).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from test_multirank import free_port

LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]

SCRIPT = """
import torch
from accelerate import Accelerator
from course_lib.train.common import end_processes
acc = Accelerator()
total = acc.reduce(torch.tensor([acc.process_index + 1.0]), reduction="sum")
print(f"rank {acc.process_index} of {acc.num_processes}: sum {total.item():g}\\n", end="", flush=True)
end_processes()  # as every trainer's command ends: gloo can abort a process that exits with the group open
"""


def test_two_cpu_processes_are_two_ranks(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    port = ["--main_process_port", str(free_port())]  # not the fixed default 29500: another job may hold it
    proc = subprocess.run(LAUNCH_2 + port + [str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the two processes share one pipe: their lines can interleave, so find the records, not the lines
    lines = sorted(re.findall(r"rank \d of \d: sum [\d.]+", proc.stdout))
    assert lines == ["rank 0 of 2: sum 3", "rank 1 of 2: sum 3"], proc.stdout
