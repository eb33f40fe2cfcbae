"""What an export starts from: a run folder of `vlm-tune sft`/`dpo` (adapter, processor, recipe, results)
and the base model its adapter was trained on, and from these which weights the adapter merges into.

The base is `--base`, else the adapter's `base_model_name_or_path`, else the recipe's `model_name_or_path`
(paths as the run saw them: relative ones are relative to where it was launched).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml
from trl import ModelConfig

from vlm_tune.core.errors import UserError
from vlm_tune.core.hub import offline_unless_reachable

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MERGE_TARGETS = ("trained", "original")  # --merge_into: the weights as trained (QLoRA: dequantized 4-bit) / the original
EXPORT_DTYPES = ("bfloat16", "float32")


# --- the run -----------------------------------------------------------------------------------
@dataclass
class RunSource:
    run_dir: Path
    adapter_config: dict
    recipe: dict  # the resolved recipe.yaml ({} when the run has none)
    command: str | None  # the command that trained the run (recipe.yaml's header)
    summary: dict  # run_summary.json ({} when missing)
    base: str  # folder or hub id of the base model
    base_config: dict  # the base's config.json
    merge_into: str  # what the adapter merges into: "original", "trained (4-bit)" or "4-bit checkpoint"
    force_base: bool = False  # --force_base: merge even into a base the adapter was not trained on

    @property
    def captioner(self) -> bool:
        """A captioner run (synthetic scenes): scored by attribute recall, not relaxed accuracy."""
        return self.recipe.get("synthetic_builder") == "scenes"

    @property
    def trained_quantized(self) -> bool:
        return bool(self.recipe.get("load_in_4bit") or self.recipe.get("load_in_8bit"))

    @property
    def base_quantized(self) -> bool:
        """The base checkpoint itself stores bitsandbytes-quantized weights (no full-precision copy)."""
        return "quantization_config" in self.base_config

    def model_args(self) -> ModelConfig:
        """The recipe's model settings (quantization, attention) pointed at the base, computing in fp32."""
        known = {f.name for f in fields(ModelConfig)}
        try:
            args = ModelConfig(**{k: v for k, v in self.recipe.items() if k in known and k != "lora_target_modules"})
        except (TypeError, ValueError) as exc:
            raise UserError(f"{self.run_dir / 'recipe.yaml'}: bad model settings ({exc})") from None
        args.model_name_or_path, args.dtype, args.use_peft = self.base, "float32", True
        return args

    def base_dtype(self) -> str:
        """The export dtype when --dtype is not given: the base's own (SmolVLM checkpoints: bfloat16)."""
        dtype = str(self.base_config.get("dtype") or self.base_config.get("torch_dtype") or "float32")
        return "float32" if dtype == "float32" else "bfloat16"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _read_recipe(run_dir: Path) -> tuple[dict, str | None]:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return {}, None
    text = path.read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    # write_resolved_recipe puts the command on the second comment line: "#   vlm-tune sft ..."
    comments = [line[1:].strip() for line in text.splitlines()[:3] if line.startswith("#")]
    command = next((c for c in comments if c.startswith(("vlm-tune ", "python "))), None)
    return (recipe if isinstance(recipe, dict) else {}), command


def read_run(adapter: str, base: str | None = None, merge_into: str = "trained") -> RunSource:
    """The run folder and its base; UserError when the adapter or the base is missing."""
    run_dir = Path(os.path.expanduser(adapter))
    if not run_dir.is_dir():
        raise UserError(f"--adapter {adapter}: no such folder (a `vlm-tune sft`/`dpo` run folder)")
    missing = [name for name in ADAPTER_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"--adapter {adapter}: no LoRA adapter there ({', '.join(missing)} missing)")
    adapter_config = _read_json(run_dir / "adapter_config.json")
    recipe, command = _read_recipe(run_dir)
    summary = _read_json(run_dir / "run_summary.json") if (run_dir / "run_summary.json").is_file() else {}
    base_name = base or adapter_config.get("base_model_name_or_path") or recipe.get("model_name_or_path")
    if not base_name:
        raise UserError(f"--adapter {adapter}: the adapter names no base model; pass --base PATH")
    base_config = read_base_config(base_name, given=base is not None)
    source = RunSource(run_dir, adapter_config, recipe, command, summary, base_name, base_config, "")
    source.merge_into = merge_target(source, merge_into)
    return source


def read_base_config(name: str, given: bool) -> dict:
    """The base's config.json (local folder, or the hub / its cache)."""
    where = "--base" if given else "the adapter's base model (pass --base PATH where it lives now)"
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{where}: {name} has no config.json (not a Hugging Face model folder)")
        return _read_json(local / "config.json")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"{where}: model folder not found: {name}")
    offline_unless_reachable()
    try:
        from huggingface_hub import hf_hub_download

        return _read_json(Path(hf_hub_download(name, "config.json")))
    except Exception as exc:  # hub errors come in many types (connection, auth, not found)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: cannot load '{name}' from the Hugging Face Hub ({reason})") from None


# --- what the adapter merges into ------------------------------------------------------------
def merge_target(source: RunSource, wanted: str) -> str:
    """'4-bit checkpoint' (the base holds only quantized weights: dequantized), 'trained (4-bit)' (a
    QLoRA run: its base quantized as in training, then dequantized — the very weights the adapter was
    trained against) or 'original' (the full-precision base)."""
    if wanted not in MERGE_TARGETS:
        raise UserError(f"--merge_into must be one of {', '.join(MERGE_TARGETS)}, not '{wanted}'")
    if source.base_quantized:
        method = source.base_config["quantization_config"].get("quant_method")
        if method != "bitsandbytes":
            raise UserError(f"base {source.base} is quantized with {method}: export dequantizes only bitsandbytes "
                            f"4-/8-bit checkpoints; pass --base with the full-precision model")
        return "4-bit checkpoint"
    if source.trained_quantized and wanted == "trained":
        return "trained (4-bit)"
    return "original"


def describe_merge(source: RunSource) -> str:
    """One sentence for the model card and the report: which weights the adapter was merged into."""
    if source.merge_into == "4-bit checkpoint":
        return (f"merged in fp32 into the dequantized 4-bit base `{source.base}` (that checkpoint holds only "
                f"bitsandbytes-quantized weights)")
    if source.merge_into == "trained (4-bit)":
        return (f"merged in fp32 into `{source.base}` quantized as in training (QLoRA, "
                f"{source.recipe.get('bnb_4bit_quant_type', 'nf4')}) and dequantized: the very weights the adapter "
                f"was trained against, so the merged model computes what the adapter did")
    if source.trained_quantized:
        return (f"merged in fp32 into the original full-precision `{source.base}`; the adapter was trained "
                f"against its 4-bit quantization, so answers may differ from the adapter's (see export_report.json)")
    return f"merged in fp32 into the original full-precision base `{source.base}`"
