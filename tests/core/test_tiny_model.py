"""The tiny SmolVLM-architecture model: an ordinary HF folder, deterministic, 4-bit friendly."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Idefics3ForConditionalGeneration

from vlm_tune.core.errors import UserError
from vlm_tune.core.tiny_model import IMAGE_SEQ_LEN, main, make_tiny_model


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_loads_with_auto_classes(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert isinstance(model, Idefics3ForConditionalGeneration)
    assert type(processor).__name__ == "Idefics3Processor"
    tokenizer = processor.tokenizer
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<end_of_utterance>", "<|im_end|>")
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_linear_widths_are_multiples_of_64(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name


def test_smolvlm_image_splitting_at_small_size(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}], add_generation_prompt=True
    )
    assert text == "<|im_start|>User:<image>What?<end_of_utterance>\nAssistant:"
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    wide = Image.new("RGB", (200, 100), "white")
    split = processor(images=[[wide]], text=[text], return_tensors="pt")
    assert split["pixel_values"].shape[1] == 2 + 1  # 128×64 after resize → 2 tiles + 1 global
    assert int((split["input_ids"] == image_id).sum()) == 3 * IMAGE_SEQ_LEN
    processor.image_processor.do_image_splitting = False
    single = processor(images=[[wide]], text=[text], return_tensors="pt")
    assert single["pixel_values"].shape[1] == 1
    assert int((single["input_ids"] == image_id).sum()) == IMAGE_SEQ_LEN


def test_deterministic_for_a_seed(tmp_path, tiny_model_dir):
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert _digest(again) == _digest(tiny_model_dir)
    assert _digest(other)["model.safetensors"] != _digest(tiny_model_dir)["model.safetensors"]
    assert _digest(other)["tokenizer.json"] == _digest(tiny_model_dir)["tokenizer.json"]


def test_4bit_load_and_generate_on_cpu(tiny_model_dir):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    from vlm_tune.core.generation import generate_answers

    answers = generate_answers(model, processor, [Image.new("RGB", (64, 64), "red")] * 2, ["What colour?", "Why?"],
                               batch_size=2, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        main(["--output", str(tmp_path / "m")])
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
