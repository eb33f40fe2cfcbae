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
# This module parses the options and prints the plan (its docstring is the --help text); the parts are
# models.py (config, processor, built-in table), tokens.py (tokens per sample), memory.py (parameters,
# memory) and measure.py (--measure).

from __future__ import annotations

import json
import os
import sys

import torch

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError
from vlm_tune.core.io import atomic_write_text, check_output_path
from vlm_tune.plan.measure import measure_activations
from vlm_tune.plan.memory import count_params, estimate_memory, process_rss_mb
from vlm_tune.plan.models import meta_model, resolve_model_config, resolve_processor
from vlm_tune.plan.tokens import count_tokens, sample_rows


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


def stand_in_warning(data_source: str, script_args) -> list[str]:
    """Planning on synthetic rows instead of the recipe's dataset is said loudly, not only in the data line
    (the recipe building its own synthetic data on first use is the expected case, not a warning)."""
    if not data_source.startswith("synthetic") or script_args.synthetic_dataset:
        return []
    return [f"dataset {script_args.dataset_name} is not on this machine: tokens were counted on synthetic "
            f"stand-in rows; save the dataset locally and pass --dataset_name DIR for its real numbers"]


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
    parser = ArgParser(prog="vlm-tune plan", add_help=False)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--model_config")
    parser.add_argument("--target", choices=["gpu", "cpu"])
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--measure", action="store_true")
    opts, recipe_argv = parser.parse_known_args(argv)
    if opts.samples < 1:
        raise UserError("--samples must be at least 1")
    if opts.num_processes is not None and opts.num_processes < 1:
        raise UserError(f"--num_processes must be at least 1, not {opts.num_processes}")
    if opts.json_path:
        check_output_path(opts.json_path, "--json", folder=False)
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
        "warnings": warnings_for(tokens) + stand_in_warning(data_source, script_args),
    }
    if opts.measure:
        result["measured"] = measure_activations(rows, tokens["sequence_lengths"], processor, model_args, script_args,
                                                 training_args)
    if opts.json_path:
        atomic_write_text(opts.json_path, json.dumps(result, indent=2) + "\n")
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
