"""The hub tier as a workshop uses it: fp16-safe training, one device everywhere, one loader, the smoke check."""
from __future__ import annotations

import argparse
import contextlib
import math

import pytest
import torch

from course_lib import config
from course_lib.teacher import TeacherError, add_teacher_options, frozen_dtype, load_hub_teacher, load_teacher

#: Modules that live on the CPU by design (their outputs are moved): the shared MiniLM text
#: encoder; peft creates LoRA layers on their base layer's device.
CPU_SIDE = ("transformers.models.bert", "sentence_transformers", "peft.")


@pytest.fixture(scope="module")
def hub_fp16(tiny_hub):
    """The tiny pipeline loaded in fp16 on the CPU: the dtype a GPU class gets."""
    with config.no_network():
        return load_hub_teacher(tiny_hub[1], device="cpu", dtype=torch.float16)


def test_fp16_teacher_trains_finite(hub_fp16):
    """Frozen fp16 teacher, fp32 LoRA and student: VSD and the inverter stay finite (NaN from step 2 before)."""
    from course_lib.distill import lora_parameters
    from course_lib.train import inverter as inv_train, vsd

    args = vsd.VSDArgs(steps=3, batch_size=2, size=32, init="identity", grid_size=4, teacher="hub")
    student, log = vsd.train(args, teacher=hub_fp16)
    assert all(math.isfinite(r[k]) for r in log for k in ("vsd", "fake", "mse_gt")), log
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert hub_fp16.unet.dtype == torch.float16  # the frozen teacher stays fp16
    fwd, log = inv_train.train(inv_train.InverterArgs(steps=2, batch_size=1, inversion_steps=1), teacher=hub_fp16)
    lora = lora_parameters(fwd)
    assert lora and all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in lora)
    assert all(math.isfinite(r["loss"]) for r in log), log


@contextlib.contextmanager
def device_recorder():
    """Fail when a module runs on inputs of another device/dtype, or was never moved by the command.

    Every ``Module.to`` marks the module and its children as placed; a forward pre-hook checks each
    module with its own parameters: placed (or CPU-side by design) and fed tensors on its parameters'
    device (and, outside autocast, in their dtype for the layers that compute with them).
    """
    problems: list[str] = []
    orig_to = torch.nn.Module.to

    def to(self, *a, **k):
        out = orig_to(self, *a, **k)
        for m in self.modules():
            m._course_placed = True
        return out

    def hook(module, args):
        params = list(module.parameters(recurse=False))
        if not params:
            return
        name = type(module).__module__ + "." + type(module).__name__
        if not getattr(module, "_course_placed", False) and not name.startswith(CPU_SIDE):
            problems.append(f"{name} never moved to the command's device")
        p = params[0]
        typed = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm))
        for x in args:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                if x.device != p.device:
                    problems.append(f"{name}: input on {x.device}, weights on {p.device}")
                if typed and x.dtype != p.dtype and not torch.is_autocast_enabled():
                    problems.append(f"{name}: input {x.dtype}, weights {p.dtype}")

    torch.nn.Module.to = to
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield problems
    finally:
        handle.remove()
        torch.nn.Module.to = orig_to


def test_every_hub_command_keeps_one_device(tiny_hub, tmp_path, capsys):
    from course_lib.apps.studio import Studio, TEACHER
    from course_lib.eval import inversion as inv_eval, teacher as t_eval
    from course_lib.train import inverter as inv_train, vsd

    hub = ["--teacher", "hub", "--teacher-path", str(tiny_hub[1])]
    runs = {
        "train-vsd": lambda: vsd.main([*hub, "--steps", "1", "--batch-size", "1", "--size", "32",
                                       "--init", "identity", "--align-weight", "0.1",
                                       "--out", str(tmp_path / "s.safetensors")]),
        "train-inverter": lambda: inv_train.main([*hub, "--steps", "1", "--batch-size", "1", "--inversion-steps", "1",
                                                  "--out", str(tmp_path / "inv.safetensors")]),
        "inversion-eval": lambda: inv_eval.main([*hub, "--inverter", str(tmp_path / "inv.safetensors"), "--n", "1",
                                                 "--steps", "1", "--ref-steps", "1", "--no-student"]),
        "teacher-eval": lambda: t_eval.main([*hub, "--steps", "1", "--n", "1", "--out", str(tmp_path / "t.png")]),
    }
    for name, fn in runs.items():
        with device_recorder() as problems:
            assert fn() == 0, (name, capsys.readouterr().err[-500:])
        assert not problems, (name, sorted(set(problems))[:8])
    studio = Studio(teacher="hub", teacher_path=str(tiny_hub[1]), teacher_steps=1, inversion=None)
    studio.model_choice.value, studio.instruction.value = TEACHER, "make it warmer"
    with device_recorder() as problems:
        res = studio.edit()
    assert not problems and res.image.shape == studio.source.shape
    assert "hub tier" in studio.note.value and "32 x 32" not in studio.note.value


def test_directional_clip_in_fp16():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    from course_lib.align import DirectionalCLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).half()
    d = DirectionalCLIP(model, SimpleTokenizer())
    src = torch.rand(2, 3, 40, 40)
    out = (src * 1.2).clamp(0, 1).requires_grad_(True)
    with device_recorder() as problems:
        loss = d.loss(src, out, ["make it brighter", "make it darker"])
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(out.grad).all()
    assert not [p for p in problems if "never moved" not in p], problems


def test_one_loader_and_options(tiny_hub):
    p = argparse.ArgumentParser()
    add_teacher_options(p)
    a = p.parse_args(["--teacher", "hub", "--teacher-path", str(tiny_hub[1])])
    with config.no_network():
        t = load_teacher(a.teacher, a.teacher_path, device="cpu")
    assert t.resolution == 16 and t.scheduler_config["clip_sample"] is False
    assert t.sample_scheduler().config.clip_sample is False
    with pytest.raises(TeacherError):
        load_teacher("embedded", tiny_hub[1] / "missing.safetensors")
    assert frozen_dtype("cpu") == torch.float32 and frozen_dtype("cuda") == torch.float16
    assert frozen_dtype("cuda", "bf16") == torch.bfloat16 and frozen_dtype("cpu", "fp16") == torch.float16


def test_hub_check_tiny(tmp_path, capsys):
    from course_lib.harness import hub_check

    rc = hub_check.main(["--tiny", "--out-dir", str(tmp_path), "--only", "teacher-eval,train-vsd"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| teacher-eval |" in out and "| train-vsd |" in out
    reports = list(tmp_path.glob("hub-check-*-tiny.md"))
    assert len(reports) == 1 and "peak RSS GB" in reports[0].read_text()
