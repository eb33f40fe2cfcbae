"""The model card (`README.md`) of an exported folder: base, recipe, training data, the run's eval numbers,
how it was merged, the export check and how to load it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vlm_tune.core.markdown import fmt, md_table, pct
from vlm_tune.export.source import RunSource, describe_merge

RECIPE_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "gradient_accumulation_steps", "lr_scheduler_type", "lora_scope", "lora_r", "lora_alpha",
               "load_in_4bit", "bnb_4bit_quant_type", "do_image_splitting", "image_longest_edge", "beta", "loss_type",
               "sft_adapter", "seed")
DATA_KEYS = ("dataset_name", "dataset_train_split", "max_train_samples", "synthetic_builder", "synthetic_sizes",
             "synthetic_seed", "synthetic_types", "ratings_file", "pairs")


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def front_matter(source: RunSource) -> list[str]:
    meta = {"library_name": "transformers", "pipeline_tag": "image-text-to-text",
            "tags": ["vlm-tune", "lora-merged", source.base_config.get("model_type", "vlm")]}
    if _is_hub_id(source.base):
        meta["base_model"] = source.base
    return ["---", *yaml.safe_dump(meta, sort_keys=False).splitlines(), "---", ""]


def _key_table(values: dict, keys: tuple[str, ...]) -> list[str]:
    rows = [[key, fmt(values[key]) if not isinstance(values[key], (list, dict)) else json.dumps(values[key])]
            for key in keys if values.get(key) is not None]
    return md_table(["key", "value"], rows) if rows else ["(not recorded)"]


def training_section(source: RunSource) -> list[str]:
    job = (source.command or "").split(" ")[1] if (source.command or "").startswith("vlm-tune ") else "LoRA"
    summary = source.summary
    lines = ["## Training", "", f"`vlm-tune {job}` run `{source.run_dir.name}`"
             + (f": {fmt(summary['steps'])} steps, effective batch {fmt(summary['effective_batch'])}"
                if "steps" in summary and "effective_batch" in summary else "") + ".", ""]
    if source.command:
        lines += ["```bash", source.command, "```", ""]
    lines += _key_table(source.recipe, RECIPE_KEYS) + [""]
    lines += ["## Training data", ""] + _key_table(source.recipe, DATA_KEYS) + [""]
    return lines


def eval_section(source: RunSource) -> list[str]:
    """The run's own held-out numbers: eval/table.md, preference_eval.json, or run_summary.json's eval_*."""
    lines = ["## Evaluation (from the run)", ""]
    table = source.run_dir / "eval" / "table.md"
    preference = source.run_dir / "preference_eval.json"
    scores = {k: v for k, v in source.summary.items() if k.startswith(("eval_", "pref_")) and k != "eval_seconds"}
    if table.is_file():
        lines += table.read_text(encoding="utf-8").strip().splitlines()
    elif preference.is_file():
        found = json.loads(preference.read_text(encoding="utf-8"))
        lines += md_table(["when", "preference accuracy", "mean margin", "pairs"],
                          [[when, pct(found[when]["preference_accuracy"]), fmt(found[when]["mean_margin"]),
                            fmt(found[when]["n"])] for when in ("before", "after") if when in found])
    elif scores:
        lines += md_table(["metric", "value"], [[k, fmt(v)] for k, v in scores.items()])
    else:
        lines.append("The run recorded no held-out evaluation.")
    return lines + [""]


def export_section(source: RunSource, report: dict) -> list[str]:
    answers, logits = report["answers"], report["logits"]
    metric = answers["metric"].replace("_", " ")
    return ["## How it was merged", "",
            f"LoRA (r={source.adapter_config.get('r')}, alpha={source.adapter_config.get('lora_alpha')}) "
            f"{describe_merge(source)}; `merge_and_unload()`, then saved in {report['dtype']}.", "",
            "## Export check", "",
            f"Adapter vs this merged model on {answers['rows']} held-out rows of `{report['dataset']}` "
            f"[{report['split']}] (`export_report.json`):", "",
            *md_table(["check", "adapter", "merged"], [
                [metric, pct(answers["adapter"]), pct(answers["merged"])],
                ["identical greedy answers", "", pct(answers["agreement"])],
                [f"max abs logit difference ({logits['positions']} positions)", "", fmt(logits["max_abs_diff"])],
                ["same top-1 token", "", pct(logits["top1_agreement"])],
            ]), ""]


def load_section(path: str) -> list[str]:
    return ["## How to load", "",
            "A plain Transformers folder: no peft needed.", "",
            "```python",
            "from PIL import Image",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'model = AutoModelForImageTextToText.from_pretrained("{path}")',
            f'processor = AutoProcessor.from_pretrained("{path}")',
            'image, question = Image.open("chart.png"), "Which category has the highest value?"',
            'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]',
            "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
            'inputs = processor(images=[[image]], text=[prompt], return_tensors="pt")',
            "new_tokens = model.generate(**inputs, max_new_tokens=32)[:, inputs[\"input_ids\"].shape[1]:]",
            "print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])",
            "```", "",
            "For llama.cpp / Ollama, convert it with llama.cpp's `convert_hf_to_gguf.py` (the text model, and "
            "`--mmproj` for the vision encoder + connector); see vlm-tune's docs/export.md.", ""]


def model_card(source: RunSource, report: dict) -> str:
    lines = front_matter(source)
    lines += [f"# {report['name']}", "",
              f"A fine-tune of `{source.base}` made with vlm-tune: its LoRA adapter merged into the base weights.", ""]
    lines += export_section(source, report) + training_section(source) + eval_section(source) + load_section(report["output"])
    return "\n".join(lines)
