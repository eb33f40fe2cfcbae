"""`vlm-tune plan`: what a recipe will cost before it is launched — tokens, parameters, memory.

    vlm-tune plan --config RECIPE.yaml [--samples 64] [--json PATH] [--model_config CONFIG.json|DIR]
                  [--target gpu|cpu] [--num_processes N] [--measure] [--any_recipe_field value ...]

A sample of the training split goes through TRL's own vision collator (the one `vlm-tune sft` trains
with), so image tokens, text tokens and sequence lengths are the trained ones, and a `max_length` that
would cut image tokens is reported before a run crashes on it. The model is built on the meta device
from its config (nothing is loaded), so planning the 2.2B recipe costs seconds on a laptop; with no
model on disk and no hub, the SmolVLM architectures come from a small built-in table and a stand-in
tokenizer. `--measure` (local model only) runs one forward pass on the worst-case batch and measures
the activations autograd keeps, to check the estimate. The formulas are in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlm_tune.core.errors import UserError

# --- built-in architectures ------------------------------------------------------------------
# For planning the real recipes offline. Sizes of the published checkpoints' config.json as we
# remember them (the hub is unreachable here, and transformers' Idefics3 defaults are Idefics3-8B's):
# text = SmolLM2-135M / 360M / 1.7B, vision = SigLIP base-patch16-512 (256M, 500M; confirmed by the
# 256M model card: "siglip-base-patch16-512", 93M encoder, 512-px patches) or SigLIP so400m-patch14-384
# (2.2B). Untied lm_head (totals then match the names: 256M / 507M / 2.25B). Pass --model_config with
# the real config.json for exact numbers.
_SIGLIP_B16_512 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 512, "patch_size": 16}
_SIGLIP_SO400M_384 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
KNOWN_MODELS = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": {
        "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "vocab_size": 49280},
        "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM-500M-Instruct": {
        "text": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
                 "num_key_value_heads": 5, "vocab_size": 49280},
        "vision": _SIGLIP_B16_512, "scale_factor": 4},
    "HuggingFaceTB/SmolVLM-Instruct": {
        "text": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 49155},
        "vision": _SIGLIP_SO400M_384, "scale_factor": 3},
}
LONGEST_EDGE_TILES = 4  # SmolVLM processors resize the longest edge to 4 tiles by default (2048 / 1536 px)
SYNTHETIC_IMAGE_SIZE = 800  # stand-in charts when the dataset is missing: about ChartQA's typical width

# Memory constants (bytes). NF4: 4 bits per weight + one fp32 absmax per 64-weight block; double quant
# stores that absmax in 8 bits with an fp32 constant per 256 blocks. LoRA: fp32 weight + grad + AdamW's
# two moments (vlm-tune keeps adapters fp32). CUDA context: typical for recent drivers, not measured here.
NF4_BYTES = 0.5
QUANT_CONST_BYTES = 4 / 64
DOUBLE_QUANT_CONST_BYTES = 1 / 64 + 4 / (64 * 256)
LORA_BYTES_PER_PARAM = 4 + 4 + 8
DDP_BUCKET_BYTES_PER_PARAM = 4  # DDP's gradient buckets: a second copy of the trainable gradients
CUDA_CONTEXT_MB = 500
LOSS_CHUNK_TOKENS = 32768  # TRL's fused LM head scores at most this many positions at once
MB = 2**20


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
    from transformers import Idefics3Config

    spec = KNOWN_MODELS[name]
    return Idefics3Config(vision_config=dict(spec["vision"]),
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


# --- processor -------------------------------------------------------------------------------
def tile_geometry(config) -> tuple[int, int]:
    """(tile px, image tokens per tile) of an Idefics3/SmolVLM config: (side / patch)² / scale²."""
    vision = config.vision_config
    return vision.image_size, (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def stand_in_processor(config):
    """SmolVLM's image processing at the config's tile size, with the tiny model's locally trained
    tokenizer: image-token counts are exact, text-token counts only approximate."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    from vlm_tune.core.tiny_model import CHAT_TEMPLATE, build_tokenizer

    tile, per_tile = tile_geometry(config)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": LONGEST_EDGE_TILES * tile},
                                                max_image_size={"longest_edge": tile}, do_image_splitting=True)
    return Idefics3Processor(image_processor=image_processor, tokenizer=build_tokenizer(), image_seq_len=per_tile,
                             chat_template=CHAT_TEMPLATE)


def resolve_processor(model_args, script_args, trust_remote_code: bool, config):
    from vlm_tune.core.modeling import load_processor

    try:
        processor = load_processor(model_args, trust_remote_code)
        source = f"{model_args.model_name_or_path} processor"
    except UserError:
        if getattr(config, "model_type", None) not in ("idefics3", "smolvlm"):
            raise
        processor = stand_in_processor(config)
        source = ("stand-in: SmolVLM image processing at the config's tile size + the tiny model's tokenizer "
                  "(text-token counts approximate)")
    image_processor = processor.image_processor
    if script_args.image_longest_edge is not None:
        image_processor.size = {"longest_edge": script_args.image_longest_edge}
    if script_args.do_image_splitting is not None:
        image_processor.do_image_splitting = script_args.do_image_splitting
    return processor, source


# --- data sample -----------------------------------------------------------------------------
def _synthetic_split(script_args, n: int):
    import importlib

    from vlm_tune.data.assets import synthetic_builder

    builder = synthetic_builder(script_args.synthetic_builder)
    size = script_args.synthetic_image_size if script_args.synthetic_dataset else SYNTHETIC_IMAGE_SIZE
    types = script_args.synthetic_types or builder.QUESTION_TYPES
    return builder.build(n, 0, 0, seed=script_args.synthetic_seed, image_size=size, num_proc=1,
                         question_types=types)["train"], size


def sample_rows(script_args, n: int) -> tuple[list[dict], str]:
    """`n` training rows spread evenly over the split, formatted as `vlm-tune sft` formats them. A dataset
    that cannot be loaded (not built yet, hub unreachable) is replaced by synthetic rows, and said so."""
    import datasets

    from vlm_tune.data.rows import (
        _decode_image,
        answer_of,
        get_split,
        load_splits,
        prompt_messages,
    )

    try:
        splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    except UserError as exc:
        split, size = _synthetic_split(script_args, n)
        reason = "the recipe builds it on first use" if script_args.synthetic_dataset else str(exc).split(" (")[0]
        source = f"synthetic {script_args.synthetic_builder} ({len(split)} rows, {size} px; dataset not used: {reason})"
        indices = list(range(len(split)))
    else:
        split = get_split(splits, script_args.dataset_train_split, script_args.dataset_name,
                          script_args.max_train_samples)
        picked = np.unique(np.linspace(0, len(split) - 1, num=min(n, len(split))).round().astype(int))
        indices = picked.tolist()
        split = split.select(indices)
        source = f"{script_args.dataset_name} [{script_args.dataset_train_split}]: {len(split)} rows spread over the split"
    if isinstance(split.features.get("image"), datasets.Image):
        split = split.cast_column("image", datasets.Image(decode=False))
    rows = []
    for index, row in enumerate(split):
        try:
            rows.append({
                "images": [_decode_image(row["image"])],
                "prompt": prompt_messages(str(row["query"]), script_args.system_prompt),
                "completion": [{"role": "assistant", "content": answer_of(row["label"])}],
            })
        except (OSError, ValueError, TypeError, KeyError) as exc:  # as to_prompt_completion reports it: row and reason
            raise UserError(f"{script_args.dataset_name} [{script_args.dataset_train_split}] row {indices[index]}: "
                            f"{type(exc).__name__}: {exc}") from None
    return rows, source


# --- tokens ----------------------------------------------------------------------------------
def _collate_one(collator, row: dict) -> dict:
    return collator([{"images": list(row["images"]), "prompt": list(row["prompt"]),
                      "completion": list(row["completion"])}])


def count_tokens(processor, rows: list[dict], max_length: int | None) -> dict:
    """Per-row counts through TRL's collator: sequence, image, text and answer tokens, tiles; the image
    tokens also with the other splitting setting."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor=processor, max_length=None, completion_only_loss=True)
    image_token_id = processor.image_token_id
    per_tile = processor.image_seq_len
    image_processor = processor.image_processor
    splitting = bool(image_processor.do_image_splitting)
    seq, image, tiles, answer = [], [], [], []
    for row in rows:
        out = _collate_one(collator, row)
        seq.append(out["input_ids"].shape[1])
        image.append(int((out["input_ids"] == image_token_id).sum()))
        tiles.append(int(out["pixel_values"].shape[1]) if "pixel_values" in out else 0)
        answer.append(int((out["labels"] != -100).sum()))
    other_tiles = []
    image_processor.do_image_splitting = not splitting
    try:
        for row in rows:
            other_tiles.append(int(image_processor(images=[row["images"]], return_tensors="pt")["pixel_values"].shape[1]))
    finally:
        image_processor.do_image_splitting = splitting
    seq_a = np.array(seq)
    truncated = int((seq_a > max_length).sum()) if max_length is not None else 0
    on, off = (tiles, other_tiles) if splitting else (other_tiles, tiles)
    return {
        "samples": len(rows),
        "tokens_per_tile": per_tile,
        "do_image_splitting": splitting,
        "image_longest_edge": (image_processor.size or {}).get("longest_edge"),
        "tiles": _stats(tiles),
        "image_tokens": _stats(image),
        "image_tokens_splitting_on": _stats([t * per_tile for t in on]),
        "image_tokens_splitting_off": _stats([t * per_tile for t in off]),
        "text_tokens": _stats([s - i for s, i in zip(seq, image)]),
        "answer_tokens": _stats(answer),
        "sequence_length": {**_stats(seq), "p50": _pct(seq_a, 50), "p95": _pct(seq_a, 95), "p99": _pct(seq_a, 99)},
        "max_length": max_length,
        "truncated_samples": truncated,
        "sequence_lengths": seq,
    }


def _stats(values: list[int]) -> dict:
    a = np.array(values or [0])
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "max": int(a.max())}


def _pct(a: np.ndarray, q: float) -> int:
    return math.ceil(np.percentile(a, q))


# --- parameters ------------------------------------------------------------------------------
@dataclass
class LinearInfo:
    name: str
    n_in: int
    n_out: int
    bias: bool
    quantized: bool
    lora: bool


def meta_model(config):
    """The model with no storage: shapes and names for counting, at no memory cost."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(config)


def _group(name: str) -> str:
    for prefix, group in (("model.vision_model.", "vision"), ("model.connector.", "connector"),
                          ("model.text_model.", "text"), ("lm_head", "lm_head")):
        if name.startswith(prefix):
            return group
    return "other"


def count_params(model, model_args, script_args) -> tuple[dict, list[LinearInfo]]:
    """Totals per part, which Linear layers bitsandbytes quantizes and which LoRA adapts (the same
    anchored regex `vlm-tune sft` gives peft), and the LoRA parameter count r × (in + out) each."""
    import re

    from transformers.quantizers.base import get_keys_to_not_convert

    from vlm_tune.core.modeling import lora_target_regex

    quantizing = bool(model_args.load_in_4bit or model_args.load_in_8bit)
    skip = set(get_keys_to_not_convert(model)) if quantizing else set()
    target = re.compile(lora_target_regex(script_args.lora_scope, model_args.lora_target_modules)) \
        if model_args.use_peft else None
    linears = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            quantized = quantizing and not any(name == k or name.endswith("." + k) for k in skip)
            linears.append(LinearInfo(name, module.in_features, module.out_features, module.bias is not None,
                                      quantized, bool(target and target.fullmatch(name))))
    groups: dict[str, int] = {}
    for name, param in model.named_parameters():
        groups[_group(name)] = groups.get(_group(name), 0) + param.numel()
    total = sum(groups.values())
    r = model_args.lora_r
    if model_args.use_peft:
        trainable, frozen = sum(r * (lin.n_in + lin.n_out) for lin in linears if lin.lora), total
    else:  # full fine-tuning: everything but the vision tower, unless train_vision_tower
        frozen = 0 if script_args.train_vision_tower else groups.get("vision", 0)
        trainable = total - frozen
    counts = {
        "total_base": total,
        **{f"{g}": n for g, n in sorted(groups.items())},
        "quantized_linear_weights": sum(lin.n_in * lin.n_out for lin in linears if lin.quantized),
        "lora_layers": sum(lin.lora for lin in linears),
        "trainable": trainable,
        "frozen": frozen,
        # as `vlm-tune sft` counts it: LoRA adds to the base model's parameters
        "trainable_percent": round(100 * trainable / max(total + (trainable if model_args.use_peft else 0), 1), 3),
    }
    return counts, linears


# --- memory ----------------------------------------------------------------------------------
def _per_layer_token_bytes(h: int, i: int, lora_r: int, lora_linears: int, p: int) -> float:
    """Bytes autograd keeps per token in one Llama decoder layer with a frozen base and LoRA: MLP gate, up,
    SiLU and product (4i), q/k/v/attention output, norm outputs and LoRA inputs (≈7h), each LoRA A output
    (r); in half precision the two RMSNorms also keep fp32 copies (2 × 4h bytes). Calibrated on the tiny
    model with --measure (fp32); see docs/scaling.md."""
    return p * (4 * i + 7 * h + lora_linears * lora_r) + (8 * h if p < 4 else 0)


def estimate_memory(config, counts: dict, linears: list[LinearInfo], tokens: dict, model_args, script_args,
                    training_args, target: str, num_processes: int, baseline_mb: float) -> dict:
    """Per-process memory in MiB: weights, LoRA + optimizer, activations at the recipe's batch size
    (worst case: every row as long as the longest sampled one), working sets, and runtime overhead."""
    text, vision = config.text_config, config.vision_config
    dtype = compute_dtype(model_args, target)
    p = torch.finfo(dtype).bits // 8
    gpu = target == "gpu"
    # weights
    quantized = counts["quantized_linear_weights"]
    if model_args.load_in_4bit:
        const = DOUBLE_QUANT_CONST_BYTES if model_args.use_bnb_nested_quant else QUANT_CONST_BYTES
        weights = quantized * (NF4_BYTES + const) + (counts["total_base"] - quantized) * p
    elif model_args.load_in_8bit:
        weights = quantized * (1 + 4 / 4096) + (counts["total_base"] - quantized) * p
    else:
        weights = counts["total_base"] * p
    # trainable state
    trainable = counts["trainable"]
    if model_args.use_peft:
        train_state = trainable * LORA_BYTES_PER_PARAM
    else:
        train_state = trainable * (p + p + 2 * p)  # weight is already in `weights`: grad + two AdamW moments
    ddp = trainable * DDP_BUCKET_BYTES_PER_PARAM if num_processes > 1 else 0
    # activations
    b = training_args.per_device_train_batch_size
    seq = tokens["sequence_length"]["max"]
    if training_args.max_length is not None:
        seq = min(seq, training_args.max_length)
    n_tok = b * seq
    layers, h, i = text.num_hidden_layers, text.hidden_size, text.intermediate_size
    layer0 = [lin for lin in linears if lin.lora and ".text_model.layers.0." in lin.name]
    per_token = _per_layer_token_bytes(h, i, model_args.lora_r if model_args.use_peft else 0, len(layer0), p)
    checkpointing = bool(training_args.gradient_checkpointing)
    if checkpointing:
        # each layer's input and the final norm's; a layer's activations are recomputed in backward
        stored = (layers + 1) * n_tok * h * p
    else:
        mask = b * seq * seq * (1 if gpu else 4 * layers)  # CPU sdpa keeps a float mask per layer
        stored = layers * n_tok * per_token + mask
    stored += n_tok * h * p  # final hidden states kept for the loss head
    image_tok = b * tokens["image_tokens"]["max"]
    if model_args.use_peft and any(lin.lora and ".connector." in lin.name for lin in linears):
        stored += image_tok * vision.hidden_size * config.scale_factor**2 * p  # connector LoRA input
    tiles = b * max(tokens["tiles"]["max"], 1)
    patches = (vision.image_size // vision.patch_size) ** 2
    if model_args.use_peft and any(lin.lora and ".vision_model." in lin.name for lin in linears):
        # LoRA in the vision tower (lora_scope: all) makes its activations part of the graph too
        v_lora = len([lin for lin in linears if lin.lora and ".encoder.layers.0." in lin.name])
        v_per_token = p * (2 * vision.intermediate_size + 7 * vision.hidden_size + v_lora * model_args.lora_r)
        v_kept = vision.hidden_size * p if checkpointing else v_per_token
        stored += vision.num_hidden_layers * tiles * patches * v_kept
    elif checkpointing and model_args.use_peft:
        # transformers' enable_input_require_grads (called with checkpointing + PEFT) hooks every input
        # embedding, the SigLIP patch embeddings too: the frozen vision tower is recorded (and backpropagated)
        # like a trainable one — its layer inputs are kept. Measured on the tiny model; see docs/scaling.md.
        stored += (vision.num_hidden_layers + 1) * tiles * patches * vision.hidden_size * p
    # working sets (alive at the peak, not kept for backward)
    backward_layer = n_tok * per_token  # gradients of one layer's activations (and its recompute)
    vision_forward = tiles * patches * p * (4 * vision.hidden_size + vision.intermediate_size)
    if model_args.attn_implementation == "eager":
        vision_forward += tiles * vision.num_attention_heads * patches**2 * p
    scored = b * tokens["answer_tokens"]["max"] if gpu else n_tok  # CUDA scores answer positions only
    loss_head = min(scored, LOSS_CHUNK_TOKENS) * text.vocab_size * 4 * 2  # fp32 logits + their softmax/grad
    working = backward_layer + vision_forward + loss_head
    overhead = CUDA_CONTEXT_MB * MB if gpu else baseline_mb * MB
    parts = {
        "weights": weights,
        "trainable_state": train_state,
        "ddp_buckets": ddp,
        "activations_stored": stored,
        "working_set": working,
    }
    allocated = sum(parts.values())
    return {
        "target": target,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "batch_per_device": b,
        "sequence_length_used": seq,
        "gradient_checkpointing": checkpointing,
        **{k: round(v / MB, 1) for k, v in parts.items()},
        "working_set_detail": {"backward_one_layer": round(backward_layer / MB, 1),
                               "vision_forward": round(vision_forward / MB, 1), "loss_head": round(loss_head / MB, 1)},
        "tensors_total": round(allocated / MB, 1),
        "runtime_overhead": round(overhead / MB, 1),
        "runtime_overhead_is": "CUDA context (typical, not in torch's max_memory_allocated)" if gpu
        else "RSS of this process after importing torch/transformers/trl/peft/datasets (measured)",
        "total": round((allocated + overhead) / MB, 1),
    }


def compute_dtype(model_args, target: str) -> torch.dtype:
    """The recipe's dtype; `auto` means bf16 on a GPU, fp32 on CPU (as modeling.resolve_dtype)."""
    if model_args.dtype in (None, "auto"):
        return torch.bfloat16 if target == "gpu" else torch.float32
    return getattr(torch, str(model_args.dtype).removeprefix("torch."))


def process_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


# --- measure (local model) -------------------------------------------------------------------
def measure_activations(rows: list[dict], tokens_seq: list[int], processor, model_args, script_args,
                        training_args) -> dict:
    """One forward pass of the recipe's model on the worst-case batch (the longest sampled rows), through
    the same loading, LoRA and loss as `vlm-tune sft`; returns what autograd keeps for backward (unique
    storages, parameters excluded) and, on CUDA, the peak allocated over load, forward, backward and one
    optimizer step (what `peak_gpu_mb` of a run reports)."""
    import tempfile

    import datasets
    from trl import SFTTrainer

    from vlm_tune.core.modeling import (
        build_lora_config,
        count_parameters,
        keep_adapters_fp32,
        load_model,
    )

    if not os.path.isdir(os.path.expanduser(model_args.model_name_or_path)):
        raise UserError(f"--measure needs the model on disk; {model_args.model_name_or_path} is not a local folder")
    b = training_args.per_device_train_batch_size
    worst = [rows[k] for k in np.argsort(tokens_seq)[::-1][:b]]
    worst = (worst * b)[:b]
    dataset = datasets.Dataset.from_list([dict(r) for r in worst])
    with tempfile.TemporaryDirectory() as tmp:
        from transformers.trainer_utils import IntervalStrategy, SaveStrategy

        training_args.output_dir, training_args.report_to, training_args.max_steps = tmp, [], 1
        training_args.eval_strategy, training_args.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
        model = load_model(model_args, training_args.trust_remote_code, script_args.train_vision_tower)
        trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=processor,
                             peft_config=build_lora_config(model_args, script_args.lora_scope))
        keep_adapters_fp32(trainer.model)
        if training_args.gradient_checkpointing:  # Trainer.train() switches it on; do as it does
            kwargs = getattr(training_args, "activation_checkpointing_kwargs", None) or \
                training_args.gradient_checkpointing_kwargs
            trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(kwargs or {}) or None)
        batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in worst]))
        params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
        kept: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        trainer.model.train()
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = trainer.compute_loss(trainer.model, batch)
        if cuda:  # backward + one optimizer step complete the GPU peak; on CPU there is nothing more to read
            loss.backward()
            trainer.create_optimizer().step()
        trainable, _ = count_parameters(trainer.model)
        quantized = sum(2 * p.numel() * p.element_size() for p in trainer.model.parameters()
                        if p.__class__.__name__ == "Params4bit")
        result = {"batch": b, "sequence_length": int(batch["input_ids"].shape[1]),
                  "activations_stored": round(sum(kept.values()) / MB, 1),
                  "trainable_params": trainable, "quantized_linear_weights": quantized}
        if cuda:
            result["peak_gpu_allocated"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return result


# --- report ----------------------------------------------------------------------------------
def warnings_for(tokens: dict) -> list[str]:
    found = []
    seq, max_length = tokens["sequence_length"], tokens["max_length"]
    if max_length is not None and tokens["truncated_samples"]:
        found.append(
            f"max_length {max_length} would truncate {tokens['truncated_samples']} of {tokens['samples']} sampled rows "
            f"(longest {seq['max']} tokens, {tokens['image_tokens']['max']} of them image tokens): cut image tokens "
            f"fail with 'Image features and image tokens do not match'. Set max_length: null or ≥ {seq['max']}"
        )
    elif max_length is not None and max_length < seq["max"] * 1.1:
        found.append(f"max_length {max_length} leaves < 10 % headroom over the longest sampled row ({seq['max']}); "
                     f"unsampled rows may be longer")
    return found


def format_report(plan: dict) -> str:
    t, c, m = plan["tokens"], plan["parameters"], plan["memory_mb"]
    seq = t["sequence_length"]
    lines = [
        f"vlm-tune plan — {plan['recipe']}",
        f"  model      {plan['model']}  ({plan['model_source']})",
        f"  processor  {plan['processor_source']}",
        f"  data       {plan['data_source']}",
        "",
        (f"Tokens per sample ({t['samples']} samples; splitting {'on' if t['do_image_splitting'] else 'off'}, "
         f"longest edge {t['image_longest_edge']} px, {t['tokens_per_tile']} tokens per tile)"),
        _row("tiles", t["tiles"]),
        _row("image tokens", t["image_tokens"]),
        _row("  with splitting", t["image_tokens_splitting_on"]),
        _row("  without splitting", t["image_tokens_splitting_off"]),
        _row("text tokens", t["text_tokens"]),
        _row("answer tokens", t["answer_tokens"]),
        (f"  {'sequence length':<20} max {seq['max']:>7,}   p50 {seq['p50']:,}  p95 {seq['p95']:,}  p99 {seq['p99']:,}"
         f"   max_length: {t['max_length'] if t['max_length'] is not None else 'null (no truncation)'}"),
        "",
        "Parameters",
        f"  {'total (base model)':<28}{c['total_base']:>15,}",
        *[f"  {'  ' + g:<28}{c[g]:>15,}" for g in ("vision", "connector", "text", "lm_head") if g in c],
        f"  {'quantized Linear weights':<28}{c['quantized_linear_weights']:>15,}",
        f"  {'trainable':<28}{c['trainable']:>15,}   ({c['trainable_percent']} %, {c['lora_layers']} LoRA layers)",
        f"  {'frozen':<28}{c['frozen']:>15,}",
        "",
        (f"Memory per process, MiB ({m['target']}, {m['compute_dtype']}, batch {m['batch_per_device']} × "
         f"{m['sequence_length_used']:,} tokens, gradient checkpointing {'on' if m['gradient_checkpointing'] else 'off'}, "
         f"{plan['num_processes']} process(es))"),
        f"  {'weights':<28}{m['weights']:>12,.1f}",
        f"  {'LoRA/trainable + AdamW':<28}{m['trainable_state']:>12,.1f}",
        *([f"  {'DDP gradient buckets':<28}{m['ddp_buckets']:>12,.1f}"] if m["ddp_buckets"] else []),
        f"  {'activations (kept)':<28}{m['activations_stored']:>12,.1f}",
        f"  {'working set':<28}{m['working_set']:>12,.1f}   "
        + ", ".join(f"{k.replace('_', ' ')} {v:,.1f}" for k, v in m["working_set_detail"].items()),
        f"  {'= tensors':<28}{m['tensors_total']:>12,.1f}",
        f"  {'+ runtime overhead':<28}{m['runtime_overhead']:>12,.1f}   {m['runtime_overhead_is']}",
        f"  {'= total':<28}{m['total']:>12,.1f}",
        f"  effective batch = {plan['effective_batch']} ({plan['batch_arithmetic']})",
    ]
    if "measured" in plan:
        meas = plan["measured"]
        ratio = m["activations_stored"] / max(meas["activations_stored"], 1e-9)
        lines += ["", f"Measured (one forward on the worst-case batch, {meas['batch']} × {meas['sequence_length']} tokens)",
                  (f"  activations kept {meas['activations_stored']:,.1f} MiB — estimate {m['activations_stored']:,.1f} "
                   f"(× {ratio:.2f})")]
        lines.append(f"  trainable {meas['trainable_params']:,} (estimate {c['trainable']:,}); 4-bit weights "
                     f"{meas['quantized_linear_weights']:,} (estimate {c['quantized_linear_weights']:,})")
        if "peak_gpu_allocated" in meas:
            lines.append(f"  peak GPU allocated (load, forward, backward, optimizer step) "
                         f"{meas['peak_gpu_allocated']:,.1f} MiB — estimate {m['tensors_total']:,.1f} (tensors)")
    for warning in plan["warnings"]:
        lines += ["", f"WARNING: {warning}"]
    return "\n".join(lines)


def _row(label: str, s: dict) -> str:
    return f"  {label:<20} max {s['max']:>7,}   mean {s['mean']:,}   min {s['min']:,}"


# --- job -------------------------------------------------------------------------------------
def plan(argv: list[str]) -> dict:
    """Parse plan options + the recipe; return the plan (also what --json writes)."""
    parser = argparse.ArgumentParser(prog="vlm-tune plan", add_help=False)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--model_config")
    parser.add_argument("--target", choices=["gpu", "cpu"])
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--measure", action="store_true")
    opts, recipe_argv = parser.parse_known_args(argv)
    if opts.samples < 1:
        raise UserError("--samples must be at least 1")
    baseline_mb = _import_training_stack()

    from trl import SFTConfig

    from vlm_tune.core.config import parse_recipe

    try:
        script_args, training_args, model_args, resolved = parse_recipe(recipe_argv, SFTConfig)
    except UserError as exc:
        if "unknown key" in str(exc):
            raise UserError(f"{exc} — vlm-tune plan reads SFT recipes") from None
        raise
    target = opts.target or ("gpu" if torch.cuda.is_available() or resolved.get("bf16") or resolved.get("fp16")
                             or str(model_args.dtype) in ("bfloat16", "float16") else "cpu")
    num_processes = opts.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    config, model_source = resolve_model_config(model_args.model_name_or_path, opts.model_config)
    if not hasattr(config, "vision_config") or not hasattr(config, "scale_factor"):
        raise UserError(f"{model_args.model_name_or_path}: plan knows Idefics3/SmolVLM models, not '{config.model_type}'")
    processor, processor_source = resolve_processor(model_args, script_args, training_args.trust_remote_code, config)
    rows, data_source = sample_rows(script_args, opts.samples)
    tokens = count_tokens(processor, rows, training_args.max_length)
    counts, linears = count_params(meta_model(config), model_args, script_args)
    memory = estimate_memory(config, counts, linears, tokens, model_args, script_args, training_args, target,
                             num_processes, baseline_mb)
    per_device, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    result = {
        "recipe": recipe_argv[recipe_argv.index("--config") + 1],
        "model": model_args.model_name_or_path,
        "model_source": model_source,
        "processor_source": processor_source,
        "data_source": data_source,
        "num_processes": num_processes,
        "effective_batch": per_device * accumulation * num_processes,
        "batch_arithmetic": f"{per_device} per device × {accumulation} accumulation × {num_processes} process(es)",
        "tokens": tokens,
        "parameters": counts,
        "memory_mb": memory,
        "warnings": warnings_for(tokens),
    }
    if opts.measure:
        result["measured"] = measure_activations(rows, tokens["sequence_lengths"], processor, model_args, script_args,
                                                 training_args)
    if opts.json_path:
        Path(opts.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _import_training_stack() -> float:
    """Import what `vlm-tune sft` imports, then read this process's RSS: the CPU runtime baseline."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from trl import SFTTrainer  # noqa: F401

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    return process_rss_mb()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    result = plan(argv)
    print(format_report(result))
    return 0
