"""Parameters and per-process memory for `vlm-tune plan`, counted on the meta-device model: which Linear
layers bitsandbytes quantizes and LoRA adapts, then weights, trainable state, the activations autograd
keeps at the recipe's batch size, the working sets alive at the peak, and the runtime overhead. The
formulas (and their calibration on the tiny model) are in docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


# --- parameters ------------------------------------------------------------------------------
@dataclass
class LinearInfo:
    name: str
    n_in: int
    n_out: int
    bias: bool
    quantized: bool
    lora: bool


def _group(name: str) -> str:
    for prefix, group in (("model.vision_model.", "vision"), ("model.connector.", "connector"),
                          ("model.text_model.", "text"), ("lm_head", "lm_head")):
        if name.startswith(prefix):
            return group
    return "other"


def linear_layers(model, model_args, script_args) -> list[LinearInfo]:
    """Every Linear layer: whether bitsandbytes quantizes it and whether LoRA adapts it (the same anchored
    regex `vlm-tune sft` gives peft)."""
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
    return linears


def count_params(model, model_args, script_args) -> tuple[dict, list[LinearInfo]]:
    """Totals per part, which Linear layers bitsandbytes quantizes and which LoRA adapts, and the LoRA
    parameter count r × (in + out) each."""
    linears = linear_layers(model, model_args, script_args)
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


# --- weights and trainable state -------------------------------------------------------------
def _weight_bytes(counts: dict, model_args, p: int) -> float:
    """Base weights: quantized Linear weights at 4 / 8 bits + their constants, the rest at `p` bytes."""
    quantized = counts["quantized_linear_weights"]
    if model_args.load_in_4bit:
        const = DOUBLE_QUANT_CONST_BYTES if model_args.use_bnb_nested_quant else QUANT_CONST_BYTES
        return quantized * (NF4_BYTES + const) + (counts["total_base"] - quantized) * p
    if model_args.load_in_8bit:
        return quantized * (1 + 4 / 4096) + (counts["total_base"] - quantized) * p
    return counts["total_base"] * p


def _trainable_state_bytes(trainable: int, model_args, p: int) -> float:
    if model_args.use_peft:
        return trainable * LORA_BYTES_PER_PARAM
    return trainable * (p + p + 2 * p)  # weight is already in the base weights: grad + two AdamW moments


# --- activations -----------------------------------------------------------------------------
def _per_layer_token_bytes(h: int, i: int, lora_r: int, lora_linears: int, p: int) -> float:
    """Bytes autograd keeps per token in one Llama decoder layer with a frozen base and LoRA: MLP gate, up,
    SiLU and product (4i), q/k/v/attention output, norm outputs and LoRA inputs (≈7h), each LoRA A output
    (r); in half precision the two RMSNorms also keep fp32 copies (2 × 4h bytes). Calibrated on the tiny
    model with --measure (fp32); see docs/scaling.md."""
    return p * (4 * i + 7 * h + lora_linears * lora_r) + (8 * h if p < 4 else 0)


def _text_stored_bytes(text, b: int, seq: int, per_token: float, checkpointing: bool, gpu: bool, p: int) -> float:
    """What the language model keeps for backward, and the final hidden states the loss head keeps."""
    layers, h = text.num_hidden_layers, text.hidden_size
    n_tok = b * seq
    if checkpointing:
        # each layer's input and the final norm's; a layer's activations are recomputed in backward
        stored = (layers + 1) * n_tok * h * p
    else:
        mask = b * seq * seq * (1 if gpu else 4 * layers)  # CPU sdpa keeps a float mask per layer
        stored = layers * n_tok * per_token + mask
    return stored + n_tok * h * p  # final hidden states kept for the loss head


def _image_stored_bytes(config, linears: list[LinearInfo], tokens: dict, model_args, b: int, tiles: int,
                        checkpointing: bool, p: int) -> float:
    """What the connector and the vision tower keep for backward: only when LoRA or hooks put them in the graph."""
    vision = config.vision_config
    stored = 0
    image_tok = b * tokens["image_tokens"]["max"]
    if model_args.use_peft and any(lin.lora and ".connector." in lin.name for lin in linears):
        stored += image_tok * vision.hidden_size * config.scale_factor**2 * p  # connector LoRA input
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
    return stored


def _working_set(config, tokens: dict, model_args, b: int, n_tok: int, tiles: int, per_token: float, gpu: bool,
                 p: int) -> dict:
    """Bytes alive at the peak but not kept for backward."""
    text, vision = config.text_config, config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    vision_forward = tiles * patches * p * (4 * vision.hidden_size + vision.intermediate_size)
    if model_args.attn_implementation == "eager" or not gpu:
        # the attention probabilities of one layer, materialized: eager everywhere, and torch's CPU sdpa for
        # SigLIP (measured on the SmolVLM-256M architecture: +299 MiB for 4 tiles = 100 activations + 201 here)
        vision_forward += tiles * vision.num_attention_heads * patches**2 * p
    scored = b * tokens["answer_tokens"]["max"] if gpu else n_tok  # CUDA scores answer positions only
    return {
        "backward_one_layer": n_tok * per_token,  # gradients of one layer's activations (and its recompute)
        "vision_forward": vision_forward,
        "loss_head": min(scored, LOSS_CHUNK_TOKENS) * text.vocab_size * 4 * 2,  # fp32 logits + their softmax/grad
    }


# --- memory ----------------------------------------------------------------------------------
def estimate_memory(config, counts: dict, linears: list[LinearInfo], tokens: dict, model_args, script_args,
                    training_args, target: str, num_processes: int, baseline_mb: float) -> dict:
    """Per-process memory in MiB: weights, LoRA + optimizer, activations at the recipe's batch size
    (worst case: every row as long as the longest sampled one), working sets, and runtime overhead."""
    from vlm_tune.core.modeling import resolve_dtype

    text = config.text_config
    gpu = target == "gpu"
    dtype = resolve_dtype(model_args, bf16_gpu=gpu)
    p = torch.finfo(dtype).bits // 8
    trainable = counts["trainable"]
    b = training_args.per_device_train_batch_size
    seq = tokens["sequence_length"]["max"]
    if training_args.max_length is not None:
        seq = min(seq, training_args.max_length)
    layer0 = [lin for lin in linears if lin.lora and ".text_model.layers.0." in lin.name]
    per_token = _per_layer_token_bytes(text.hidden_size, text.intermediate_size,
                                       model_args.lora_r if model_args.use_peft else 0, len(layer0), p)
    checkpointing = bool(training_args.gradient_checkpointing)
    tiles = b * max(tokens["tiles"]["max"], 1)
    working = _working_set(config, tokens, model_args, b, b * seq, tiles, per_token, gpu, p)
    parts = {
        "weights": _weight_bytes(counts, model_args, p),
        "trainable_state": _trainable_state_bytes(trainable, model_args, p),
        "ddp_buckets": trainable * DDP_BUCKET_BYTES_PER_PARAM if num_processes > 1 else 0,
        "activations_stored": _text_stored_bytes(text, b, seq, per_token, checkpointing, gpu, p)
        + _image_stored_bytes(config, linears, tokens, model_args, b, tiles, checkpointing, p),
        "working_set": sum(working.values()),
    }
    allocated = sum(parts.values())
    overhead = CUDA_CONTEXT_MB * MB if gpu else baseline_mb * MB
    return {
        "target": target,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "batch_per_device": b,
        "sequence_length_used": seq,
        "gradient_checkpointing": checkpointing,
        **{k: round(v / MB, 1) for k, v in parts.items()},
        "working_set_detail": {k: round(v / MB, 1) for k, v in working.items()},
        "tensors_total": round(allocated / MB, 1),
        "runtime_overhead": round(overhead / MB, 1),
        "runtime_overhead_is": "CUDA context (typical, not in torch's max_memory_allocated)" if gpu
        else "RSS of this process after importing torch/transformers/trl/peft/datasets (measured)",
        "total": round((allocated + overhead) / MB, 1),
    }


def process_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB
