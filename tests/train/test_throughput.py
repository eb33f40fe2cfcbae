"""Throughput logging: tokens/s in a real tiny run's log history, and the MFU arithmetic (the 4N rule)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from vlm_tune.train import sft
from vlm_tune.train.throughput import (
    Component,
    WorkCounter,
    components,
    flops_per_unit,
    mfu,
    model_flops,
    peak_flops,
)

from helpers import sft_argv


class CountNonPadTokens(TrainerCallback):
    """transformers' own non-pad token count, as a reference (the flag's "non_padding" value cannot be
    given on the command line: HfArgumentParser parses the `str | bool` field as a bool)."""

    def on_train_begin(self, args, state, control, **kwargs):
        args.include_num_input_tokens_seen = "non_padding"


def test_tiny_run_logs_tokens_per_second_and_mfu(tiny_model_dir, tiny_chartqa_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_TUNE_PEAK_TFLOPS", "0.001")  # a made-up 1 GFLOP/s peak: MFU is logged on CPU too
    out = tmp_path / "run"
    sft.main(sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "2", "--save_strategy", "no",
                      "--eval_strategy", "no", "--eval_after_train", "false", "--num_validation_samples", "0"),
             callbacks=[CountNonPadTokens()])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 2 and all(entry["train_tokens_per_second"] > 0 for entry in steps)
    assert all(entry["train_mfu"] > 0 for entry in steps)
    final = history[-1]
    # MFU and tokens/s come from the same counts: model FLOPs per LM token are at least the LM's 4N
    assert final["train_mfu"] * 1e9 / final["train_tokens_per_second"] > 4 * 100_000
    # whole-run value over the Trainer's runtime: our hook count equals transformers' non-pad count
    counted = final["train_tokens_per_second"] * final["train_runtime"]
    assert counted == pytest.approx(final["num_input_tokens_seen"], rel=2e-3)


def test_work_counter_counts_patches_connector_and_non_pad_tokens(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.image_processor.do_image_splitting = False  # one 64-px tile per image
    from PIL import Image

    images = [[Image.new("RGB", (80, 60), "red")], [Image.new("RGB", (50, 90), "blue")]]
    texts = ["<image>What colour?", "<image>Which bar is the largest one here?"]
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    counter = WorkCounter(model)
    model.train()
    model(**batch)
    model.eval()
    with torch.no_grad():
        model(**batch)  # not training: not counted
    counter.remove()
    assert counter.patches == 2 * 64  # 2 tiles × (64 px / 8 px)² patches
    assert counter.connector_tokens == 2 * 16  # 64 patches / scale_factor² per tile
    assert counter.lm_tokens() == int(batch["attention_mask"].sum()) < batch["input_ids"].numel()


def test_components_exclude_lookups_and_split_frozen_from_trainable(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from vlm_tune.core.modeling import lora_target_regex

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    inner = model.model
    vision_all = sum(p.numel() for p in inner.vision_model.parameters())
    position = inner.vision_model.embeddings.position_embedding.weight.numel()
    text_all = sum(p.numel() for p in inner.text_model.parameters())
    embed = inner.text_model.embed_tokens.weight.numel()
    parts = components(model)
    assert parts["vision"].frozen == 0 and parts["vision"].trainable == vision_all - position  # nothing frozen yet
    assert parts["lm"].trainable == text_all - embed + model.lm_head.weight.numel()

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_regex("lm+connector")))
    parts = components(peft_model)
    lora = {name: sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and f".{name}." in n)
            for name in ("text_model", "connector")}
    assert parts["vision"] == Component("vision", frozen=vision_all - position, trainable=0)
    assert parts["connector"].trainable == lora["connector"] > 0
    assert parts["lm"].trainable == lora["text_model"] > 0
    assert parts["lm"].frozen == text_all - embed + model.lm_head.weight.numel()


def test_mfu_arithmetic_is_the_4n_rule():
    # frozen vision tower, frozen connector, LM with frozen weights + LoRA
    parts = {"vision": Component("vision", frozen=100), "connector": Component("connector", frozen=10),
             "lm": Component("lm", frozen=1000, trainable=10)}
    rates = flops_per_unit(parts)
    assert rates == {"vision": 200.0, "connector": 20.0, "lm": 4 * 1000 + 6 * 10}  # backprop never reaches vision/connector
    flops = model_flops(rates, vision_patches=64, connector_tokens=16, lm_tokens=40)
    assert flops == 200 * 64 + 20 * 16 + 4060 * 40 == 175_520
    assert mfu(flops, seconds=2.0, peak=175_520.0) == pytest.approx(0.5)
    assert mfu(flops, seconds=2.0, peak=None) is None

    # LoRA on the connector: backprop now goes through it (input gradients of its frozen weights too)
    parts["connector"].trainable = 5
    assert flops_per_unit(parts) == {"vision": 200.0, "connector": 4 * 10 + 6 * 5, "lm": 4060.0}

    # an H100 at 989 TFLOP/s doing 247 TFLOP in one second: 25 % MFU
    assert mfu(247.25e12, 1.0, peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.25)


def test_peak_table_matches_cuda_device_names(monkeypatch):
    monkeypatch.delenv("VLM_TUNE_PEAK_TFLOPS", raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops("Some Future GPU") is None and peak_flops(None) is None
    monkeypatch.setenv("VLM_TUNE_PEAK_TFLOPS", "100")
    assert peak_flops("Some Future GPU") == 100e12
