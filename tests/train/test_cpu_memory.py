"""CPU training gives freed memory back to the OS (vlm_tune.train.cpu_memory)."""

from __future__ import annotations

import sys

import torch

from vlm_tune.train import cpu_memory


def test_the_mmap_threshold_is_fixed_on_linux_cpu_unless_the_environment_sets_it(monkeypatch):
    monkeypatch.setenv(cpu_memory.ENV, "131072")
    assert cpu_memory.give_freed_memory_back() is False  # the user's setting stands
    monkeypatch.delenv(cpu_memory.ENV)
    assert cpu_memory.give_freed_memory_back() is (sys.platform.startswith("linux") and not torch.cuda.is_available())
