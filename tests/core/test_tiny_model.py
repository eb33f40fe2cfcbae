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


# --- --arch smolvlm2 -------------------------------------------------------------------------
def test_smolvlm2_is_smolvlm_with_the_same_module_paths(tiny_model_dir, tiny_smolvlm2_dir):
    from transformers import SmolVLMForConditionalGeneration

    v1 = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    v2 = AutoModelForImageTextToText.from_pretrained(tiny_smolvlm2_dir)
    assert isinstance(v2, SmolVLMForConditionalGeneration) and v2.config.model_type == "smolvlm"
    assert v2.config.architectures == ["SmolVLMForConditionalGeneration"]
    # LoRA scopes are regexes over module paths: identical paths mean identical scopes. Same seed, same
    # init order: the very weights of the v1 tiny model, so both architectures train to the same numbers.
    v1_weights = dict(v1.named_parameters())
    assert {n for n, _ in v2.named_parameters()} == set(v1_weights)
    assert all(torch.equal(p, v1_weights[n]) for n, p in v2.named_parameters())
    for name, module in v2.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.in_features % 64 == 0 and module.out_features % 64 == 0, name
    # SmolVLM declares lm_head tied to the embeddings; the tiny model keeps them apart (its wide lm_head init)
    assert not torch.equal(v2.lm_head.weight, v2.model.text_model.embed_tokens.weight)


def test_smolvlm2_processor_folder(tiny_smolvlm2_dir):
    import json

    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    saved = json.loads((tiny_smolvlm2_dir / "processor_config.json").read_text())
    assert saved["processor_class"] == "SmolVLMProcessor" and saved["image_seq_len"] == IMAGE_SEQ_LEN
    assert saved["image_processor"]["image_processor_type"] == "SmolVLMImageProcessor"
    video = saved["video_processor"]  # what AutoProcessor builds SmolVLMVideoProcessor from where torchvision is
    assert video["video_processor_type"] == "SmolVLMVideoProcessor"
    assert video["video_sampling"] == {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 64}}
    assert (tiny_smolvlm2_dir / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
    tokenizer_config = json.loads((tiny_smolvlm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["processor_class"] == "SmolVLMProcessor"


def test_smolvlm2_prompts_and_image_tokens_equal_v1(tiny_model_dir, tiny_smolvlm2_dir):
    """SmolVLM2's template and image-token layout for images are SmolVLM v1's: same ids, same pixels."""
    from trl import ModelConfig

    from vlm_tune.core.modeling import load_processor

    v1 = AutoProcessor.from_pretrained(tiny_model_dir)
    v2 = load_processor(ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir)))
    assert type(v2).__name__ == "SmolVLMProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    text = v2.apply_chat_template(messages, add_generation_prompt=True)
    assert text == v1.apply_chat_template(messages, add_generation_prompt=True)
    wide = Image.new("RGB", (200, 100), "white")
    for splitting in (True, False):
        v1.image_processor.do_image_splitting = v2.image_processor.do_image_splitting = splitting
        a = v1(images=[[wide]], text=[text], return_tensors="pt")
        b = v2(images=[[wide]], text=[text], return_tensors="pt")
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert v2.tokenizer.get_vocab() == v1.tokenizer.get_vocab()


def test_smolvlm2_deterministic_and_4bit_generates(tmp_path, tiny_smolvlm2_dir):
    from transformers import BitsAndBytesConfig

    from vlm_tune.core.generation import generate_answers
    from vlm_tune.core.modeling import load_processor

    main(["--arch", "smolvlm2", "--output", str(tmp_path / "again")])
    assert _digest(tmp_path / "again") == _digest(tiny_smolvlm2_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(tiny_smolvlm2_dir, quantization_config=quant,
                                                        dtype=torch.float32)
    from trl import ModelConfig

    processor = load_processor(ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir)))
    answers = generate_answers(model, processor, [Image.new("RGB", (64, 64), "red")] * 2, ["What colour?", "Why?"],
                               batch_size=2, max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(UserError, match="invalid choice"):
        main(["--arch", "llava", "--output", str(tmp_path / "m")])
    with pytest.raises(UserError, match="unknown tiny-model arch 'llava'"):
        make_tiny_model(tmp_path / "m", arch="llava")
