"""No backward pass into a frozen vision tower (vlm_tune.train.frozen_vision): in SFT with validation
samples generated between steps, through repeated checkpointing toggles, and not for a trained tower.
DPO's side (≥ 3 steps with checkpointing): tests/train/test_dpo.py."""

from __future__ import annotations

import torch
from trl import ModelConfig

from helpers import sft_argv
from vision_probes import VisionBackwardCounter, input_grad_hooks, vision_tower
from vlm_tune.train import sft


def test_no_backward_into_the_frozen_tower_in_sft_with_validation_samples_between_steps(
        tiny_model_dir, tiny_chartqa_dir, tmp_path):
    counter = VisionBackwardCounter()
    summary = sft.main(sft_argv(tiny_model_dir, tiny_chartqa_dir, tmp_path / "run", "--max_steps", "3",
                                "--gradient_checkpointing", "true", "--per_device_train_batch_size", "2",
                                "--eval_strategy", "steps", "--eval_steps", "1", "--num_validation_samples", "2",
                                "--max_eval_samples", "2", "--eval_after_train", "false", "--save_strategy", "no"),
                       callbacks=[counter])
    assert summary["steps"] == 3
    generated = sorted(p.name for p in (tmp_path / "run" / "validation").glob("step-*.jsonl"))
    assert len(generated) == 4, f"validation samples before, between and after the steps: {generated}"
    assert counter.per_step == [0, 0, 0], "backward reached the frozen vision tower"
    assert counter.hooks_per_step == [(0, 1)] * 3


def peft_model(model_dir, scope: str):
    from peft import get_peft_model

    from vlm_tune.core.modeling import build_lora_config, load_model

    model_args = ModelConfig(model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8)
    return get_peft_model(load_model(model_args), build_lora_config(model_args, scope))


def backward_reaches_tower(model, processor_inputs) -> bool:
    """Does a training forward + backward send gradients into the tower's output?"""
    reached = []

    def watch(module, args, output):
        if output.last_hidden_state.requires_grad:
            output.last_hidden_state.register_hook(lambda grad: reached.append(True))

    handle = vision_tower(model).register_forward_hook(watch)
    model.train()
    model(**processor_inputs, labels=processor_inputs["input_ids"]).loss.backward()
    handle.remove()
    return bool(reached)


def tiny_inputs(model_dir):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many bars?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True) + "3"
    return processor(images=[[Image.new("RGB", (64, 64), "red")]], text=[text], return_tensors="pt")


def test_checkpointing_toggles_leave_one_hook_and_no_backward_into_a_frozen_tower(tiny_model_dir):
    from vlm_tune.train.frozen_vision import keep_vision_frozen

    model = peft_model(tiny_model_dir, "lm+connector")
    inputs = tiny_inputs(tiny_model_dir)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.gradient_checkpointing_enable({"use_reentrant": False})  # already two hooks per embedding
    tower = vision_tower(model)
    assert input_grad_hooks(tower.get_input_embeddings()) == 2 and backward_reaches_tower(model, inputs)

    keep_vision_frozen(model)
    keep_vision_frozen(model)  # again: a no-op
    for _ in range(5):  # what TRL does around each reference forward / generation
        model.gradient_checkpointing_disable()
        model.gradient_checkpointing_enable({"use_reentrant": True})
    assert input_grad_hooks(tower.get_input_embeddings()) == 0
    assert input_grad_hooks(model.get_input_embeddings()) == 1
    assert not any(getattr(m, "gradient_checkpointing", False) for m in tower.modules())
    assert not backward_reaches_tower(model, inputs)
    assert torch.is_grad_enabled(), "the grad mode is restored after the tower's forward"
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads), "LoRA (connector included) still gets its gradients"


def test_a_tower_that_trains_keeps_its_backward(tiny_model_dir):
    from vlm_tune.train.frozen_vision import keep_vision_frozen

    model = peft_model(tiny_model_dir, "all")
    keep_vision_frozen(model)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    assert backward_reaches_tower(model, tiny_inputs(tiny_model_dir))
    assert all(p.grad is not None for n, p in model.named_parameters() if "vision_model" in n and "lora_" in n)
