"""The model `vlm-tune plan` plans for: its config (file, local folder, HF cache, or a built-in table of
SmolVLM architectures), its processor (or a stand-in at the config's tile size), and the meta-device
model built from the config — shapes and names at no memory cost, nothing loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlm_tune.core.errors import UserError

# --- built-in architectures ------------------------------------------------------------------
# For planning the real recipes offline. Sizes of the published checkpoints' config.json as we
# remember them (the hub is unreachable here, and transformers' Idefics3 defaults are Idefics3-8B's):
# text = SmolLM2-135M / 360M / 1.7B, vision = SigLIP base-patch16-512 (256M, 500M; confirmed by the
# 256M model card: "siglip-base-patch16-512", 93M encoder, 512-px patches) or SigLIP so400m-patch14-384
# (2.2B). Untied lm_head (totals then match the names: 256M / 507M / 2.25B). Pass --model_config with
# the real config.json for exact numbers.
# SmolVLM2 (model_type smolvlm, SmolVLMForConditionalGeneration: Idefics3 with another name): the same
# towers — 256M/500M the v1 256M/500M architecture (512-px tiles, 64 tokens), 2.2B SmolLM2-1.7B +
# SigLIP so400m (384-px tiles, 81 tokens) with SmolVLM2's 49,280-token vocabulary. Also from memory.
_SIGLIP_B16_512 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 512, "patch_size": 16}
_SIGLIP_SO400M_384 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
_SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "vocab_size": 49280}
_SMOLLM2_360M = {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
                 "num_key_value_heads": 5, "vocab_size": 49280}
_SMOLLM2_1_7B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
                 "num_key_value_heads": 32}
KNOWN_MODELS = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": {"text": _SMOLLM2_135M, "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM-500M-Instruct": {"text": _SMOLLM2_360M, "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM-Instruct": {"text": dict(_SMOLLM2_1_7B, vocab_size=49155), "vision": _SIGLIP_SO400M_384,
                                       "scale_factor": 3},
    "HuggingFaceTB/SmolVLM2-256M-Video-Instruct": {"model_type": "smolvlm", "text": _SMOLLM2_135M,
                                                   "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM2-500M-Video-Instruct": {"model_type": "smolvlm", "text": _SMOLLM2_360M,
                                                   "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": {"model_type": "smolvlm", "text": dict(_SMOLLM2_1_7B, vocab_size=49280),
                                             "vision": _SIGLIP_SO400M_384, "scale_factor": 3},
}
LONGEST_EDGE_TILES = 4  # SmolVLM processors resize the longest edge to 4 tiles by default (2048 / 1536 px)


# --- model config ----------------------------------------------------------------------------
def _config_from_file(path: str):
    from transformers import AutoConfig

    p = Path(os.path.expanduser(path))
    if p.is_dir():
        return AutoConfig.from_pretrained(str(p))
    if p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"--model_config {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if "model_type" not in data:
            raise UserError(f"--model_config {path}: no model_type (expected a model's config.json)")
        return AutoConfig.for_model(**data)
    raise UserError(f"--model_config {path}: no such file or folder")


def known_config(name: str):
    from transformers import Idefics3Config, SmolVLMConfig

    spec = KNOWN_MODELS[name]
    config_class = SmolVLMConfig if spec.get("model_type") == "smolvlm" else Idefics3Config
    return config_class(vision_config=dict(spec["vision"]),
                        text_config=dict(spec["text"], model_type="llama", tie_word_embeddings=False),
                        scale_factor=spec["scale_factor"], tie_word_embeddings=False)


def resolve_model_config(name: str, override: str | None):
    """(config, where it came from): --model_config, the local model folder, the HF cache, or the table."""
    from transformers import AutoConfig

    if override:
        return _config_from_file(override), f"--model_config {override}"
    if os.path.isdir(os.path.expanduser(name)):
        return AutoConfig.from_pretrained(os.path.expanduser(name)), f"{name}/config.json"
    from vlm_tune.core.hub import offline_unless_reachable

    offline_unless_reachable()
    try:
        return AutoConfig.from_pretrained(name), f"{name} (hub or local cache)"
    except (OSError, ValueError):
        if name in KNOWN_MODELS:
            return known_config(name), "built-in SmolVLM table (sizes from memory; --model_config for exact)"
    raise UserError(
        f"cannot plan '{name}': not a local folder, not in the HF cache and not a built-in SmolVLM; "
        f"pass --model_config CONFIG.json (the model's config.json) or a local model folder"
    )


def meta_model(config):
    """The model with no storage: shapes and names for counting, at no memory cost."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(config)


# --- processor -------------------------------------------------------------------------------
def tile_geometry(config) -> tuple[int, int]:
    """(tile px, image tokens per tile) of an Idefics3/SmolVLM config: (side / patch)² / scale²."""
    vision = config.vision_config
    return vision.image_size, (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def stand_in_processor(config):
    """SmolVLM's image processing at the config's tile size, with the tiny model's locally trained
    tokenizer: image-token counts are exact, text-token counts only approximate. SmolVLM2 (model_type
    smolvlm) gets its own processor class and chat template (same prompt text for images)."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    from vlm_tune.core import smolvlm2
    from vlm_tune.core.tiny_model import CHAT_TEMPLATE, SMOLVLM2_CHAT_TEMPLATE, build_tokenizer

    tile, per_tile = tile_geometry(config)
    image_processing = dict(size={"longest_edge": LONGEST_EDGE_TILES * tile}, max_image_size={"longest_edge": tile},
                            do_image_splitting=True)
    if getattr(config, "model_type", None) == "smolvlm":
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        return smolvlm2.build_processor(SmolVLMImageProcessorPil(**image_processing), build_tokenizer(), {},
                                        per_tile, SMOLVLM2_CHAT_TEMPLATE)
    return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**image_processing),
                             tokenizer=build_tokenizer(), image_seq_len=per_tile, chat_template=CHAT_TEMPLATE)


def resolve_processor(model_args, script_args, trust_remote_code: bool, config):
    """(processor with the recipe's image budget, where it came from): the model's own, or the stand-in."""
    from vlm_tune.core.modeling import load_processor, set_image_budget

    try:
        processor = load_processor(model_args, trust_remote_code)
        source = f"{model_args.model_name_or_path} processor"
    except UserError:
        if getattr(config, "model_type", None) not in ("idefics3", "smolvlm"):
            raise
        processor = stand_in_processor(config)
        source = ("stand-in: SmolVLM image processing at the config's tile size + the tiny model's tokenizer "
                  "(text-token counts approximate)")
    set_image_budget(processor, script_args.image_longest_edge, script_args.do_image_splitting)
    return processor, source
