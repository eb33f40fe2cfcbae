"""Verify an export: the adapter (on its base as trained) against the merged folder loaded the plain way.

Two checks on held-out rows of the run's own test split:
- logits, teacher-forced on a fixed batch (the first LOGIT_ROWS rows, prompt + reference answer):
  max |Δlogit| and top-1 agreement over every non-padding position;
- greedy answers on N rows: how many are identical, and each model's score (ChartQA relaxed accuracy,
  a captioner's attribute recall, or for DPO pairs relaxed accuracy against the chosen answer).
The export fails when answers agree on fewer than `min_answer_agreement` of the rows or max |Δlogit|
exceeds the bound of the export dtype (TOLERANCE; docs/export.md says why these values).
"""

from __future__ import annotations

import gc
from pathlib import Path

import datasets
import torch

from vlm_tune.core.errors import UserError
from vlm_tune.core.generation import generate_answers, prompt_text
from vlm_tune.data.rows import get_split, load_splits
from vlm_tune.data.scoring import question_types, score
from vlm_tune.export.merge import trained_base, with_adapter
from vlm_tune.export.source import RunSource

TOLERANCE = {
    "min_answer_agreement": 0.95,
    # fp32: only summation order differs (measured 5e-6 on the tiny model, merged into the weights as trained);
    # bf16: weights and activations rounded to 8 mantissa bits (measured 0.15 on the tiny model).
    "max_abs_logit_diff": {"float32": 1e-2, "bfloat16": 1.0},
}
LOGIT_ROWS = 4
PAIR_COLUMNS = ("images", "prompt", "chosen")
DISAGREEMENTS_SHOWN = 5


# --- held-out rows -------------------------------------------------------------------------------
def held_out(source: RunSource, dataset_name: str | None, rows: int) -> datasets.Dataset:
    """The first `rows` rows of the run's test split as ChartQA columns (image, query, label, ...)."""
    name = dataset_name or source.recipe.get("dataset_name")
    if not name:
        raise UserError(f"{source.run_dir} has no recipe.yaml naming its data; pass --dataset PATH to verify on")
    split_name = source.recipe.get("dataset_test_split", "test")
    splits = load_splits(name, source.recipe.get("dataset_config"))
    if split_name in splits and all(c in splits[split_name].column_names for c in PAIR_COLUMNS):
        pairs = splits[split_name]
        splits = datasets.DatasetDict({split_name: pairs_as_questions(pairs.select(range(min(rows, len(pairs)))))})
    split = get_split(splits, split_name, name, rows)
    if len(split) == 0:
        raise UserError(f"dataset {name} [{split_name}] is empty: nothing to verify the export on")
    return split


def pairs_as_questions(pairs: datasets.Dataset) -> datasets.Dataset:
    """DPO pairs → questions: the image, the prompt's last user turn and the chosen answer as label."""
    def last_text(messages, role=None):
        texts = [m["content"] for m in messages if role is None or m["role"] == role]
        return str(texts[-1]) if texts else ""

    return datasets.Dataset.from_dict({
        "image": [images[0] for images in pairs["images"]],
        "query": [last_text(prompt, "user") for prompt in pairs["prompt"]],
        "label": [[last_text(chosen)] for chosen in pairs["chosen"]],
        "type": ["pair"] * len(pairs),
    })


# --- one model's outputs -------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced_logits(model, processor, split: datasets.Dataset, system_prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits in fp32 on the CPU, mask of real positions) for prompt + reference answer of the fixed batch."""
    batch = split.select(range(min(LOGIT_ROWS, len(split))))
    texts = [prompt_text(processor, query, system_prompt) + label[0] for query, label in zip(batch["query"], batch["label"])]
    images = [[image.convert("RGB")] for image in batch["image"]]
    inputs = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    return logits.float().cpu(), inputs["attention_mask"].bool()


def outputs_of(model, processor, split, source: RunSource) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    system_prompt = source.recipe.get("system_prompt")
    logits, mask = teacher_forced_logits(model, processor, split, system_prompt)
    answers = generate_answers(model, processor, list(split["image"]), list(split["query"]), system_prompt,
                               batch_size=16, max_new_tokens=48 if source.captioner else 16, desc="Verifying")
    return {"logits": logits, "mask": mask, "answers": answers}


def answer_score(split: datasets.Dataset, answers: list[str], captioner: bool) -> float | None:
    """Relaxed accuracy (ChartQA, DPO pairs), or a captioner's attribute recall over the split's scenes."""
    if captioner:
        from data_builders.scenes import score_predictions

        return score_predictions(split, answers)[1]["combined"]["recall"]
    labels = [[label] if isinstance(label, str) else list(label) for label in split["label"]]
    return score(answers, labels, question_types(split))[1]["relaxed_accuracy"]


# --- compare -------------------------------------------------------------------------------------
def compare(reference: dict, merged: dict, split, source: RunSource) -> dict:
    mask = reference["mask"]
    diff = (merged["logits"] - reference["logits"]).abs()[mask]
    same_top1 = (merged["logits"].argmax(-1) == reference["logits"].argmax(-1))[mask]
    pairs = list(zip(split["query"], reference["answers"], merged["answers"]))
    differ = [{"row": i, "question": q, "adapter": a, "merged": m} for i, (q, a, m) in enumerate(pairs) if a != m]
    metric = "attribute_recall" if source.captioner else "relaxed_accuracy"
    if "type" in split.column_names and set(split["type"]) == {"pair"}:
        metric = "relaxed_accuracy_vs_chosen"  # DPO pairs: the team's chosen answer is the label
    return {
        "logits": {"rows": int(mask.shape[0]), "positions": int(mask.sum()), "max_abs_diff": float(diff.max()),
                   "mean_abs_diff": float(diff.mean()), "top1_agreement": float(same_top1.float().mean())},
        "answers": {"rows": len(pairs), "agreement": 1 - len(differ) / len(pairs), "metric": metric,
                    "adapter": answer_score(split, reference["answers"], source.captioner),
                    "merged": answer_score(split, merged["answers"], source.captioner),
                    "disagreements": differ[:DISAGREEMENTS_SHOWN]},
    }


def tolerance_for(source: RunSource, dtype: str) -> dict:
    """The bounds of this export. The logit bound holds the merged model to what the adapter computed; it is
    left out (None) when a QLoRA adapter goes into the original full-precision base, which differs from the
    weights it was trained against by their quantization error: then only the answers are held to agree."""
    off_trained_base = source.merge_into == "original" and source.trained_quantized
    return {"min_answer_agreement": TOLERANCE["min_answer_agreement"],
            "max_abs_logit_diff": None if off_trained_base else TOLERANCE["max_abs_logit_diff"][dtype]}


def failures(result: dict, tolerance: dict, dtype: str) -> list[str]:
    """Why the merged model does not count as answering like the adapter (empty: it does)."""
    found = []
    agreement, rows = result["answers"]["agreement"], result["answers"]["rows"]
    if agreement < tolerance["min_answer_agreement"]:
        found.append(f"greedy answers agree on {100 * agreement:.1f} % of {rows} rows "
                     f"(needs >= {100 * tolerance['min_answer_agreement']:.0f} %)")
    bound = tolerance["max_abs_logit_diff"]
    if bound is not None and not result["logits"]["max_abs_diff"] <= bound:  # NaN fails too
        found.append(f"max |Δlogit| {result['logits']['max_abs_diff']:.3g} > {bound:g} (the bound for {dtype})")
    return found


# --- verify ---------------------------------------------------------------------------------------
def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def verify(source: RunSource, folder: Path, split: datasets.Dataset, processor, dtype: str) -> dict:
    """Adapter (on the base as trained) vs the merged folder loaded with AutoModelForImageTextToText."""
    from transformers import AutoModelForImageTextToText

    reference = outputs_of(with_adapter(trained_base(source), source), processor, split, source)
    free_memory()  # one model in memory at a time
    merged_model = AutoModelForImageTextToText.from_pretrained(folder)  # as a user loads it: its saved dtype
    if any("lora_" in name for name, _ in merged_model.named_parameters()):
        raise RuntimeError(f"{folder}: the saved model still has LoRA layers")
    merged = outputs_of(merged_model, processor, split, source)
    del merged_model
    free_memory()
    result = compare(reference, merged, split, source)
    result["tolerance"] = tolerance_for(source, dtype)
    result["failures"] = failures(result, result["tolerance"], dtype)
    result["passed"] = not result["failures"]
    return result
