"""bench memory: each stage's peak memory of the student's retouch, and the 8-bit pipeline's PSNR."""
import json

import pytest
import torch

from course_lib.eval import bench_retouch, retouch_memory as M

pytestmark = pytest.mark.skipif(not M.peak_supported(), reason="no /proc/self/clear_refs here")


def test_measure_counts_what_a_call_adds():
    n = 64 << 20
    res, sec, mb = M.measure(lambda: torch.ones(n, dtype=torch.uint8))
    assert res.numel() == n and sec >= 0
    assert 60 <= mb < 80  # the 64 MB it keeps (touched), little else
    _, _, mb = M.measure(lambda: float(torch.ones(n, dtype=torch.uint8).sum()))
    assert mb >= 60  # a temporary counts at its peak too


def test_bench_memory_small_photo(tmp_path, capsys):
    out = tmp_path / "mem.json"
    assert bench_retouch.bench_main(["memory", "--sizes", "960x540", "--n", "2", "--size", "160",
                                     "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["command"].startswith("python -m course_lib bench memory --sizes 960x540")
    stages = {(r["path"], r["stage"]): r for r in res["memory"]}
    assert set(stages) == {("8-bit", s) for s in ("decode", "network input", "grid", "pass", "encode",
                                                   "retouch (decode to encode)")} | {
        ("float32", "photo to float"), ("float32", "student (float in, float out)")}
    # the 8-bit path holds no full-resolution float copy: its result is a quarter of one (noise of a small photo aside)
    assert stages[("8-bit", "pass")]["float_copies"] < 0.6
    assert stages[("float32", "photo to float")]["float_copies"] > 0.8
    q = res["quality"]
    assert set(q["psnr"]) == {"torch path", "float inference", "fused 8-bit", "torch path, 8-bit"}
    assert q["fused_vs_torch_8bit_max_levels"] <= 1 and abs(q["fused_minus_torch_8bit_dB"]) < 0.05
    assert abs(q["float_inference_minus_torch_dB"]) < 0.01
    assert "| 960x540 | 8-bit | pass |" in capsys.readouterr().out
