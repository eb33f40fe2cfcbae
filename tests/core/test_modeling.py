"""LoRA scopes never reach the vision tower by accident; machine checks fail in one line; the shared
helpers (dtype, image budget, 4-bit-aware counts, hub names and errors) give one answer."""

from __future__ import annotations

import re

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForImageTextToText
from trl import ModelConfig

from vlm_tune.core.errors import UserError
from vlm_tune.core.hub import hub_error, is_hub_id
from vlm_tune.core.modeling import (
    build_lora_config,
    check_machine,
    count_parameters,
    lora_target_regex,
    resolve_dtype,
    set_image_budget,
    stored_values,
)


def _adapted(model_dir, scope, names=None):
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    config = build_lora_config(ModelConfig(use_peft=True, lora_r=4, lora_target_modules=names), scope)
    peft_model = get_peft_model(model, config)
    return {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in peft_model.named_parameters() if ".lora_A" in n}


def test_lm_scope_is_text_attention_and_mlp_only(tiny_model_dir):
    adapted = _adapted(tiny_model_dir, "lm")
    assert adapted and all(n.startswith("model.text_model.layers.") for n in adapted)
    assert {n.rsplit(".", 1)[1] for n in adapted} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_bare_names_stay_inside_the_scope(tiny_model_dir):
    """`q_proj` exists in the vision tower too; inside scope 'lm' it must only hit the text model."""
    adapted = _adapted(tiny_model_dir, "lm", ["q_proj", "v_proj"])
    assert adapted and all(n.startswith("model.text_model.") and n.endswith(("q_proj", "v_proj")) for n in adapted)


def test_connector_and_all_scopes(tiny_model_dir):
    with_connector = _adapted(tiny_model_dir, "lm+connector")
    assert "model.connector.modality_projection.proj" in with_connector
    assert not any("vision_model" in n for n in with_connector)
    everything = _adapted(tiny_model_dir, "all")
    assert any(n.startswith("model.vision_model.encoder.layers.") for n in everything)
    assert "lm_head" not in everything  # LoRA on lm_head breaks TRL's loss; never in a scope


def test_regex_is_anchored():
    pattern = lora_target_regex("lm")
    assert re.fullmatch(pattern, "model.text_model.layers.3.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.vision_model.encoder.layers.3.self_attn.q_proj")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_half_precision_on_cpu_is_refused(flag):
    with pytest.raises(UserError, match=f"{flag}: true"):
        check_machine({flag: True}, ModelConfig())


def test_4bit_without_bitsandbytes(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))

    with pytest.raises(UserError, match="load_in_4bit: true needs bitsandbytes"):
        check_machine({}, ModelConfig(load_in_4bit=True))


def test_eval_before_training_keeps_4bit_gradients_right(tiny_model_dir):
    """An eval/generate pass must not switch NF4 layers to bitsandbytes' inference-only CPU layout."""
    from vlm_tune.core.modeling import load_model

    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=True, use_bnb_nested_quant=True,
                             use_peft=True, lora_r=4)
    model = get_peft_model(load_model(model_args), build_lora_config(model_args, "lm"))
    ids = torch.randint(0, 500, (1, 12))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    states = [m.weight.quant_state for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert states and not any(getattr(s, "packing_format_for_cpu", False) for s in states)
    # layer 0 only gets a gradient through the frozen 4-bit layers above it
    first = dict(model.named_parameters())["base_model.model.model.text_model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_frozen_vision_tower_is_not_backpropagated(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    """Gradient checkpointing hooks every sub-model's input embeddings; the frozen SigLIP tower's hook
    is removed so no activation of it is kept for a backward pass it does not need."""
    from transformers import TrainerCallback

    from helpers import sft_argv
    from vlm_tune.train import sft

    seen = {}

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if not seen:
                vision = next(m for n, m in model.named_modules() if n.endswith("model.vision_model"))
                def record(module, inputs, output):
                    seen.setdefault("grad", output.last_hidden_state.requires_grad)

                vision.encoder.register_forward_hook(record)

    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, tmp_path / "run", "--max_steps", "2", "--save_strategy", "no",
                    "--eval_after_train", "false", "--gradient_checkpointing", "true")
    summary = sft.main(argv, callbacks=[Record()])
    assert seen == {"grad": False}
    assert summary["train_loss"] > 0  # and training itself still ran (the connector LoRA gets its grads)


def test_cpu_inference_dequantizes_the_4bit_base_to_the_same_weights(tiny_model_dir, tiny_run_dir):
    """Captioning/eval on CPU swaps bitsandbytes' 4-bit layers for plain ones holding the dequantized
    values, so the adapter sees the weights it was trained against: same logits as the 4-bit model."""
    import bitsandbytes as bnb

    from vlm_tune.core.modeling import load_for_inference

    def load(dequantize):
        model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=True, dtype="float32",
                                 bnb_4bit_quant_type="nf4", use_bnb_nested_quant=True)
        return load_for_inference(model_args, adapter=str(tiny_run_dir), do_image_splitting=False,
                                  dequantize_on_cpu=dequantize)

    kept, processor = load(False)
    plain, _ = load(True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in kept.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())
    assert not plain.training and not kept.training
    lora = [n for n, _ in plain.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for n, p in plain.named_parameters() if "lora_B" in n)  # the trained adapter
    inputs = processor(text=["Hello there"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(kept(**inputs).logits, plain(**inputs).logits, atol=1e-4)


# --- shared helpers --------------------------------------------------------------------------
def test_dtype_for_this_or_another_machine():
    assert resolve_dtype(ModelConfig(dtype="auto"), bf16_gpu=True) == torch.bfloat16
    assert resolve_dtype(ModelConfig(dtype="auto"), bf16_gpu=False) == torch.float32
    assert resolve_dtype(ModelConfig(dtype="float16"), bf16_gpu=True) == torch.float16  # the recipe's wins
    if not torch.cuda.is_available():
        assert resolve_dtype(ModelConfig()) == torch.float32


def test_image_budget_sets_only_what_the_recipe_names():
    class Processor:
        image_processor = type("ImageProcessor", (), {"size": {"longest_edge": 2048}, "do_image_splitting": True})()

    processor = set_image_budget(Processor())
    assert processor.image_processor.size == {"longest_edge": 2048} and processor.image_processor.do_image_splitting
    set_image_budget(processor, 512, False)
    assert processor.image_processor.size == {"longest_edge": 512} and not processor.image_processor.do_image_splitting


def test_4bit_weights_count_the_values_they_store():
    class Params4bit(torch.nn.Parameter):  # bitsandbytes' class name; two 4-bit values per byte
        pass

    packed = Params4bit(torch.zeros(6, dtype=torch.uint8), requires_grad=False)
    plain = torch.nn.Parameter(torch.zeros(3, 4))
    assert stored_values(packed) == 12 and stored_values(plain) == 12
    model = torch.nn.Module()
    model.packed, model.plain = packed, plain
    assert count_parameters(model) == (12, 24)


def test_hub_ids_and_the_one_line_hub_error():
    assert is_hub_id("HuggingFaceTB/SmolVLM-256M-Instruct")
    assert not any(is_hub_id(n) for n in ("./a/b", "/a/b", "~/a", "model", "a/b/c"))
    error = hub_error("'a/b'", OSError("boom\nmore"), "folder", "run it")
    assert str(error) == ("cannot load 'a/b': not a local folder and the Hugging Face Hub did not provide it (boom). "
                          "Where the hub is reachable run it")
    assert "(OSError)" in str(hub_error("'a/b'", OSError(""), "folder", "x"))


# --- the processor route (SmolVLM2 without torchvision) ---------------------------------------
def test_lora_scopes_adapt_the_same_modules_on_smolvlm2(tiny_model_dir, tiny_smolvlm2_dir):
    for scope in ("lm", "lm+connector", "all"):
        assert _adapted(tiny_smolvlm2_dir, scope) == _adapted(tiny_model_dir, scope), scope


def test_smolvlm2_processor_loads_without_torchvision(tiny_smolvlm2_dir, tmp_path):
    import json

    import transformers
    from PIL import Image
    from transformers.utils import is_torchvision_available

    from vlm_tune.core.modeling import load_processor
    from vlm_tune.core.smolvlm2 import VideoProcessorStandIn

    if not is_torchvision_available():  # this is why the route exists (CPU machines)
        with pytest.raises(ImportError, match="Torchvision"):
            transformers.AutoProcessor.from_pretrained(tiny_smolvlm2_dir)
    processor = load_processor(ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir)), image_longest_edge=64,
                               do_image_splitting=False)
    assert isinstance(processor, transformers.SmolVLMProcessor) and type(processor).__name__ == "SmolVLMProcessor"
    assert processor.image_processor.size == {"longest_edge": 64} and not processor.image_processor.do_image_splitting
    if is_torchvision_available():  # a GPU machine: AutoProcessor, with the real video processor
        assert type(processor.video_processor).__name__ == "SmolVLMVideoProcessor"
        return
    assert isinstance(processor.video_processor, VideoProcessorStandIn)
    assert (processor.video_processor.num_frames, processor.video_processor.fps) == (64, 1)
    with pytest.raises(UserError, match="video input needs torchvision"):
        processor(videos=[[Image.new("RGB", (64, 64))]], text=["<video>"])
    # saved as it was loaded (video settings included): a machine with torchvision loads it with AutoProcessor
    processor.save_pretrained(tmp_path / "saved")
    original = json.loads((tiny_smolvlm2_dir / "processor_config.json").read_text())
    saved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert saved["video_processor"] == original["video_processor"] and saved["processor_class"] == "SmolVLMProcessor"
    again = load_processor(ModelConfig(model_name_or_path=str(tmp_path / "saved")))
    assert again.chat_template == processor.chat_template and again.image_seq_len == processor.image_seq_len


def test_processor_route_reraises_what_is_not_smolvlm2_without_torchvision(tiny_model_dir, tiny_smolvlm2_dir,
                                                                           monkeypatch):
    import transformers

    from vlm_tune.core import smolvlm2
    from vlm_tune.core.modeling import load_processor

    def broken(*args, **kwargs):
        raise ImportError("something else is missing")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", broken)
    with pytest.raises(ImportError, match="something else"):  # an Idefics3 folder: not ours to patch up
        load_processor(ModelConfig(model_name_or_path=str(tiny_model_dir)))
    monkeypatch.setattr(smolvlm2, "is_torchvision_available", lambda: True)
    with pytest.raises(ImportError, match="something else"):  # torchvision there: AutoProcessor's error stands
        load_processor(ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir)))

    def no_num2words(*args, **kwargs):
        raise ImportError("Package `num2words` is required to run SmolVLM processor.")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_num2words)
    with pytest.raises(UserError, match="pip install num2words"):
        load_processor(ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir)))
