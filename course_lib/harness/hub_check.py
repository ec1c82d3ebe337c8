"""``python -m course_lib hub-check``: every hub-tier command, one step each, on a real-size random pipeline.

Prepares a class without downloading anything: InstructPix2Pix at its real size with random
weights (:func:`course_lib.teacher.make_real_size_pipeline`: SD-1.5 UNet 859.5 M parameters with
8 input channels, SD VAE 83.7 M, CLIP ViT-L/14 text encoder 123.1 M, the full tokenizer) is
written once with ``save_pretrained`` to ``outputs/hub_check/ip2p-real-size-random`` (about
4.3 GB, reused), then each hub command runs **in its own subprocess with a time limit** for one
step at 512 px, loading the pipeline offline through ``--teacher hub --teacher-path DIR``:

* ``teacher-eval`` - one 1-step DDIM edit of one held-out photo;
* ``train-vsd`` - one VSD step (batch 1, 512-px crops, with the alignment loss), checkpoint written;
* ``train-inverter`` - one cycle-consistency step (1 inversion + 1 generation step);
* ``inversion-eval`` - the lesson-07 tables on one photo with that inverter (1-step references);
* ``studio`` - the studio's teacher edit of a bundled photo (the code Voila runs);
* ``directional-clip`` - lesson 06's hub loss with a real-size random ViT-B-32, forward and backward.

It prints one table (command, seconds, peak RSS of the command's process in GB, status) and
writes it to ``outputs/hub_check/hub-check-<time>.md`` (never overwrites). The pictures are noise;
times and memory are the real ones. ``--tiny`` runs the same script on the tiny pipeline (the
test suite does). Exit code 1 when a command failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import config
from ..perceptual import load_lpips
from ..teacher import HUB_REPO, load_hub_teacher, make_real_size_pipeline, make_tiny_pipeline
from ..text import OPENCLIP_DEFAULT, OpenCLIPTextEncoder

#: Where the pipelines, the table and the commands' outputs go.
OUT_DIR = config.OUTPUT_DIR / "hub_check"
#: Per-command time limit (seconds): real size on a CPU, and tiny.
LIMIT_S = {"real": 1200.0, "tiny": 120.0}
#: The ``--only`` names, in the order they run.
COMMANDS = ("teacher-eval", "train-vsd", "train-inverter", "inversion-eval", "studio", "directional-clip")

_STUDIO = """
import sys, time
from course_lib.apps.studio import Studio, TEACHER
st = Studio(teacher='hub', teacher_path=sys.argv[1], teacher_steps=1, inversion=None)
st.model_choice.value = TEACHER
st.instruction.value = 'make it warmer'
r = st.edit()
assert r.image.shape == st.source.shape, (r.image.shape, st.source.shape)
print('studio:', r.details)
"""

_CLIP = """
import sys, torch, open_clip
from course_lib.align import DirectionalCLIP
name = sys.argv[1]
model = open_clip.create_model(name, pretrained=None)  # random weights, the real architecture
clip = DirectionalCLIP(model, open_clip.get_tokenizer(name))
src = torch.rand(2, 3, 512, 512)
out = src.clone().requires_grad_(True)
loss = clip.loss(src, out, ['make it warmer', 'make it cooler'])
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(out.grad).all()
print('directional-clip:', float(loss))
"""


def fetch_hub_weights() -> list[str]:
    """Download every hub weight the lessons use into the Hugging Face cache (``COURSE_ONLINE=1``):
    InstructPix2Pix (lessons 04-05, 07), open_clip ViT-B-32 (lessons 03, 06), LPIPS's VGG-16 backbone
    (lessons 07-08). Returns one line per weight; raises on the first that fails."""
    if not config.online():
        raise RuntimeError("fetching needs the network: run it as COURSE_ONLINE=1 python -m course_lib hub-check --fetch")
    done = []
    load_hub_teacher(HUB_REPO, device="cpu")
    done.append(f"InstructPix2Pix: {HUB_REPO}")
    OpenCLIPTextEncoder(OPENCLIP_DEFAULT[0], OPENCLIP_DEFAULT[1])
    done.append(f"open_clip: {OPENCLIP_DEFAULT[0]} {OPENCLIP_DEFAULT[1]} ({OPENCLIP_DEFAULT[2]})")
    done.append(f"LPIPS: {load_lpips().label}")
    return done


def build_pipeline(folder: Path, tiny: bool) -> Path:
    """Write the random pipeline once (``save_pretrained``) and return its folder (reused when present)."""
    if (folder / "model_index.json").is_file():
        return folder
    part = folder.with_name(folder.name + ".part")
    with tempfile.TemporaryDirectory() as tmp:
        pipe = (make_tiny_pipeline if tiny else make_real_size_pipeline)(tmp)
        pipe.save_pretrained(str(part))
    part.rename(folder)
    return folder


def commands(pipe: Path, run: Path, tiny: bool) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of each check (argv after ``python``)."""
    hub = ["--teacher", "hub", "--teacher-path", str(pipe)]
    m = ["-m", "course_lib"]
    size = "32" if tiny else "512"
    return [
        ("teacher-eval", m + ["teacher-eval", *hub, "--steps", "1", "--n", "1", "--out", str(run / "teacher.png")]),
        ("train-vsd", m + ["train-vsd", *hub, "--steps", "1", "--batch-size", "1", "--size", size,
                           "--align-weight", "0.1", "--out", str(run / "student_vsd.safetensors")]),
        ("train-inverter", m + ["train-inverter", *hub, "--steps", "1", "--batch-size", "1",
                                "--inversion-steps", "1", "--out", str(run / "inverter.safetensors")]),
        ("inversion-eval", m + ["inversion-eval", *hub, "--inverter", str(run / "inverter.safetensors"), "--n", "1",
                                "--steps", "1", "--ref-steps", "1", "--no-student", "--out", str(run / "inversion.md")]),
        ("studio", ["-c", _STUDIO, str(pipe)]),
        ("directional-clip", ["-c", _CLIP, "ViT-B-32" if not tiny else "RN50"]),
    ]


def run_one(argv: list[str], limit: float, log: Path) -> tuple[str, float, float]:
    """Run ``python ARGV`` with a time limit: ``(status, seconds, peak RSS GB of that process)``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(config.REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("COURSE_MODE", "fast")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, *argv], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=config.REPO_ROOT)
        status, rss_kb = "", 0
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:  # this process's own rusage: its peak resident set (kB on Linux)
                rss_kb = usage.ru_maxrss
                sig = os.WIFSIGNALED(code)
                rc = -os.WTERMSIG(code) if sig else os.WEXITSTATUS(code)
                proc.returncode = rc
                status = status or ("ok" if rc == 0 else f"exit {rc}")
                break
            if time.perf_counter() - t0 > limit:
                status = f"timeout {limit:.0f} s"
                proc.kill()
            time.sleep(0.2)
    return status, time.perf_counter() - t0, rss_kb / 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def table(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["| command | seconds | peak RSS GB | status |", "|---|---:|---:|---|"]
    lines += [f"| {n} | {s:.1f} | {g:.2f} | {st} |" for n, st, s, g in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib hub-check",
                                description="Run every hub-tier command for one step at 512 px on a real-size "
                                            "InstructPix2Pix with random weights (offline); print time and peak "
                                            "memory per command.")
    p.add_argument("--tiny", action="store_true", help="the tiny random pipeline instead (seconds; the tests)")
    p.add_argument("--pipeline", default=None, help="use this pipeline folder (default: build the random one once)")
    p.add_argument("--out-dir", default=str(OUT_DIR), help="pipelines, logs and the table (default: outputs/hub_check)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(COMMANDS)}")
    p.add_argument("--limit", type=float, default=None, help="seconds per command (default 1200; tiny 120)")
    p.add_argument("--fetch", action="store_true",
                   help="instead: download every hub weight the lessons use (needs COURSE_ONLINE=1), then exit")
    a = p.parse_args(argv)
    if a.fetch:
        try:
            for line in fetch_hub_weights():
                print(f"hub-check --fetch: {line}")
        except Exception as exc:  # one line, whatever the hub or the network said
            print(f"error: {_first_line(exc)}", file=sys.stderr)
            return 2
        return 0
    only = [c.strip() for c in a.only.split(",")] if a.only else list(COMMANDS)
    bad = [c for c in only if c not in COMMANDS]
    if bad:
        p.error(f"--only: unknown {', '.join(bad)}; choose from {', '.join(COMMANDS)}")
    out_dir = Path(a.out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = out_dir / f"run-{stamp}{'-tiny' if a.tiny else ''}"
    run.mkdir(parents=True, exist_ok=False)
    report = out_dir / f"hub-check-{stamp}{'-tiny' if a.tiny else ''}.md"
    with open(report, "x"):  # claim the name: never overwrite
        pass
    limit = a.limit or LIMIT_S["tiny" if a.tiny else "real"]
    t0 = time.perf_counter()
    pipe = Path(a.pipeline) if a.pipeline else build_pipeline(
        out_dir / ("ip2p-tiny-random" if a.tiny else "ip2p-real-size-random"), a.tiny)
    print(f"hub-check: pipeline {pipe} ready in {time.perf_counter() - t0:.0f} s; logs in {run}", flush=True)
    rows = []
    for name, args in commands(pipe, run, a.tiny):
        if name not in only:
            continue
        status, secs, gb = run_one(args, limit, run / f"{name}.log")
        rows.append((name, status, secs, gb))
        print(f"hub-check: {name}: {status} in {secs:.1f} s, peak RSS {gb:.2f} GB", flush=True)
    head = (f"hub-check {'(tiny pipeline)' if a.tiny else '(real-size random InstructPix2Pix, 512 px)'} "
            f"{time.strftime('%Y-%m-%d %H:%M')}, device {config.device()}, torch threads {torch.get_num_threads()}, "
            f"pipeline {pipe}\n\n")
    text = head + table(rows) + "\n"
    print(text)
    report.write_text(text)
    print(f"hub-check: wrote {report}")
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
