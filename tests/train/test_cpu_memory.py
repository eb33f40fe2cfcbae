"""CPU training of a real-sized model gives freed memory back to the OS (vlm_tune.train.cpu_memory)."""

from __future__ import annotations

import sys

import torch

from vlm_tune.train import cpu_memory


def test_the_mmap_threshold_is_fixed_on_linux_cpu_for_a_big_model_unless_the_environment_sets_it(monkeypatch,
                                                                                                   tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "model.safetensors", "wb") as f:  # sparse: its size, not its bytes
        f.truncate(cpu_memory.SMALL_CHECKPOINT_BYTES + 1)
    calls = []  # a fake libc: the real mallopt would change malloc for the rest of this test process

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(cpu_memory.ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setenv(cpu_memory.ENV, "131072")
    assert cpu_memory.give_freed_memory_back(str(big)) is False  # the user's setting stands
    monkeypatch.delenv(cpu_memory.ENV)
    on_linux_cpu = sys.platform.startswith("linux") and not torch.cuda.is_available()
    assert cpu_memory.give_freed_memory_back(str(big)) is on_linux_cpu
    assert cpu_memory.give_freed_memory_back("HuggingFaceTB/SmolVLM-256M-Instruct") is on_linux_cpu  # a hub name
    assert calls == [(cpu_memory.M_MMAP_THRESHOLD, cpu_memory.THRESHOLD_BYTES)] * (2 if on_linux_cpu else 0)


def test_a_small_checkpoint_keeps_glibcs_default(tiny_model_dir, monkeypatch):
    monkeypatch.delenv(cpu_memory.ENV, raising=False)
    assert cpu_memory.is_small_checkpoint(str(tiny_model_dir))
    assert cpu_memory.give_freed_memory_back(str(tiny_model_dir)) is False
