"""Merge: the base in fp32 (as trained and dequantized, or the original) + the LoRA adapter →
`merge_and_unload()` → cast → a plain Hugging Face folder (safetensors, config, generation config, processor).

Never merged into a quantized layer: peft's merge into a bitsandbytes 4-bit layer dequantizes, adds ΔW
and re-quantizes, rounding small updates away.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlm_tune.core.errors import UserError
from vlm_tune.core.fingerprint import check_base
from vlm_tune.core.modeling import attach_adapter, load_model, load_processor
from vlm_tune.export.source import RunSource

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


# --- bases -------------------------------------------------------------------------------------
def _from_pretrained(source: RunSource, **kwargs):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(
            source.base, dtype=torch.float32, trust_remote_code=bool(source.recipe.get("trust_remote_code")),
            attn_implementation=source.recipe.get("attn_implementation"), **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load base {source.base}: {str(exc).strip().splitlines()[0][:200]}") from None


def trained_base(source: RunSource):
    """The base exactly as the adapter saw it in training, with fp32 weights: quantized as the recipe
    says (or as the checkpoint is), then dequantized — the values the NF4 matmuls computed with."""
    if source.base_quantized:
        # its own quantization config applies (an explicit quantization_config=None breaks the load)
        model = _from_pretrained(source, device_map={"": 0} if torch.cuda.is_available() else None)
    else:
        model = load_model(source.model_args(), bool(source.recipe.get("trust_remote_code")))
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize(dtype=torch.float32)
    return model.float().eval()


def original_base(source: RunSource):
    """The full-precision base checkpoint in fp32, no quantization."""
    return _from_pretrained(source).eval()


def base_for_merge(source: RunSource):
    return original_base(source) if source.merge_into == "original" else trained_base(source)


def with_adapter(model, source: RunSource):
    """The run's adapter on `model`; weights of other shapes (another architecture) are one line."""
    # a hub base that was not on this machine before it loaded is checked now (else: checked already, no-op)
    check_base(source.run_dir, source.base, None, source.force_base, "--base", required=True)
    return attach_adapter(model, source.run_dir, source.base).eval()


# --- merge + save --------------------------------------------------------------------------------
def merge(source: RunSource, dtype: str):
    """The merged model (a plain transformers model, no peft layers) in `dtype`."""
    peft_model = with_adapter(base_for_merge(source), source)
    try:
        merged = peft_model.merge_and_unload(safe_merge=True)  # safe_merge: refuses NaN/inf results
    except ValueError as exc:
        raise UserError(f"cannot merge {source.run_dir}: {exc}") from None
    forget_quantized_loading(merged)
    merged.config.use_cache = True  # training switches the KV cache off in the config; generation wants it
    if getattr(merged.config, "text_config", None) is not None:
        merged.config.text_config.use_cache = True
    return merged.to(getattr(torch, dtype)).cpu().eval()


def forget_quantized_loading(model) -> None:
    """A model read from a 4-bit checkpoint remembers how its quantized tensors were loaded, and
    save_pretrained would try to reverse that (NotImplementedError); dequantized, those steps no longer apply."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if not any(
            "absmax" in pattern or "quant_state" in pattern for pattern in getattr(c, "source_patterns", []))]


def folder_processor(folder: Path | str):
    """The processor saved in a folder (a run's, or an export's), loaded the project's one way."""
    from trl import ModelConfig

    return load_processor(ModelConfig(model_name_or_path=str(folder)))


def run_processor(source: RunSource):
    """The processor the run saved (image settings as trained); the base's with the recipe's settings
    when the run folder has none."""
    if (source.run_dir / "processor_config.json").is_file() or (source.run_dir / "preprocessor_config.json").is_file():
        return folder_processor(source.run_dir)
    recipe = source.recipe
    return load_processor(source.model_args(), bool(recipe.get("trust_remote_code")),
                          recipe.get("image_longest_edge"), recipe.get("do_image_splitting"))


def save_merged(merged, processor, folder: Path) -> None:
    """safetensors weights, config.json, generation_config.json and the processor files."""
    merged.save_pretrained(folder)  # transformers 5 writes safetensors only
    processor.save_pretrained(folder)
    check_plain_folder(folder)


def check_plain_folder(folder: Path) -> None:
    """The folder is a plain model: no adapter files, weights only as safetensors, a config."""
    names = {path.name for path in folder.iterdir()}
    problems = [name for name in names if name.startswith("adapter_")]
    problems += [name for name in names if name.endswith(WEIGHT_SUFFIXES) and not name.endswith(".safetensors")]
    if "config.json" not in names or not any(name.endswith(".safetensors") for name in names):
        problems.append("config.json or *.safetensors missing")
    if problems:
        raise RuntimeError(f"export folder {folder} is not a plain model folder: {', '.join(sorted(problems))}")
