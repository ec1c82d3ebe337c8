"""Every training script runs under ``accelerate launch`` unchanged (one CPU process here; the same
command with ``--multi_gpu --num_processes N`` is the workshop recipe in the README)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]

SCRIPTS = {
    "train_student": ["--steps", "2", "--batch-size", "2", "--size", "64", "--net-size", "64", "--out", "{tmp}/s.safetensors"],
    "train_teacher": ["--steps", "2", "--batch-size", "2", "--resolution", "16", "--channels", "8,16",
                      "--out-dir", "{tmp}/teacher", "--export", "{tmp}/t.safetensors"],
    "train_vsd": ["--steps", "2", "--batch-size", "2", "--size", "32", "--init", "identity", "--out", "{tmp}/v.safetensors"],
    "train_inverter": ["--steps", "1", "--batch-size", "2", "--out", "{tmp}/i.safetensors"],
}


@pytest.mark.parametrize("module", list(SCRIPTS))
def test_training_script_runs_under_accelerate_launch(module, tmp_path):
    args = [a.format(tmp=tmp_path) for a in SCRIPTS[module]]
    env = {**os.environ, "COURSE_MODE": "fast", "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml"),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(LAUNCH + ["-m", f"course_lib.{module}", *args, "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [p for p in tmp_path.rglob("*.safetensors")]
    assert written, f"{module} wrote no checkpoint under accelerate launch"
