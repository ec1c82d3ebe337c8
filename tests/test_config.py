import socket

import pytest
import torch

from course_lib import config


def test_mode_switch(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "fast")
    assert config.is_fast() and config.pick(fast=1, full=2) == 1
    monkeypatch.setenv("COURSE_MODE", "FULL")
    assert not config.is_fast() and config.pick(fast=1, full=2) == 2
    monkeypatch.delenv("COURSE_MODE")
    assert config.mode() == "full"  # the learner's default
    monkeypatch.setenv("COURSE_MODE", "quick")
    with pytest.raises(ValueError, match="COURSE_MODE"):
        config.mode()


def test_seed_everything_reproducible():
    g = config.seed_everything(123)
    a = torch.rand(3), torch.rand(2, generator=g)
    g = config.seed_everything(123)
    b = torch.rand(3), torch.rand(2, generator=g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_device_choice(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert config.device().type in ("cpu", "cuda", "mps")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert config.device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            config.device("cuda")


def test_offline_by_default(monkeypatch):
    import os

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "COURSE_ONLINE"):
        monkeypatch.delenv(var, raising=False)
    config.apply_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_no_network_blocks_connections():
    with config.no_network():
        with pytest.raises(config.NetworkBlocked):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        s = socket.socket()
        with pytest.raises(config.NetworkBlocked):
            s.connect(("127.0.0.1", 9))
        s.close()
    # restored afterwards
    assert socket.socket.connect is not None and "refuse" not in repr(socket.socket.connect)


def test_progress_silent_in_fast(monkeypatch):
    monkeypatch.setenv("COURSE_MODE", "fast")
    assert config.progress(range(3)).disable
    monkeypatch.setenv("COURSE_MODE", "full")
    bar = config.progress(range(3))
    assert not bar.disable
    bar.close()
