"""`vlm-tune dpo`: team ratings → preference pairs → DPO (TRL's DPOTrainer) with QLoRA.

    vlm-tune dpo --config recipes/tiny/dpo_ratings.yaml [--any_field value ...]

The reference model is never a second copy: a fresh LoRA trains against the same model with
adapters disabled; when starting from an SFT adapter (`sft_adapter:`), TRL keeps a frozen copy of
that adapter ("ref") as the reference, so DPO stays anchored to the SFT policy it refines.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.utils import use_adapter

from vlm_tune.train import tracking
from vlm_tune.core.errors import UserError
from vlm_tune.core.modeling import (
    FrozenVisionNoGrad,
    build_lora_config,
    check_machine,
    keep_adapters_fp32,
    load_model,
    load_processor,
)
from vlm_tune.core.config import VlmScriptArguments, parse_recipe, write_resolved_recipe
from vlm_tune.report.run_report import write_report_safely
from vlm_tune.data.assets import ensure_assets
from vlm_tune.train.sft import print_summary, train_and_save

PREFERENCE_COLUMNS = ("images", "prompt", "chosen", "rejected")


@dataclass
class DpoScriptArguments(VlmScriptArguments):
    """Script arguments + where preference pairs come from."""

    sft_adapter: str | None = field(
        default=None, metadata={"help": "Start from this SFT LoRA adapter (its frozen copy is the DPO reference)."}
    )
    ratings_file: str | None = field(
        default=None,
        metadata={"help": "Team ratings (CSV/JSONL/Parquet); pairs are built into dataset_name if it is missing."},
    )
    sample_ratings: bool = field(
        default=False, metadata={"help": "Generate the sample ratings set at ratings_file if it is missing."}
    )
    sample_charts: int = field(default=120, metadata={"help": "Charts in the generated sample ratings set."})
    pairs: str = field(default="best-worst", metadata={"help": "Pair strategy: best-worst | all | adjacent."})
    min_raters: int = field(default=2, metadata={"help": "Drop items rated by fewer raters."})
    rating_margin: float = field(default=0.0, metadata={"help": "Minimum aggregated-score gap of a pair."})
    zscore: bool = field(default=True, metadata={"help": "Normalise each rater's scores before averaging."})


# --- preference pairs ------------------------------------------------------------------------
def ensure_pairs(args: DpoScriptArguments) -> None:
    """The embedded default generates sample ratings and builds pairs on first use."""
    if not args.ratings_file or os.path.exists(args.dataset_name):
        return
    from data_builders.ratings import RatingsError, build_pairs, save_pairs

    if args.sample_ratings and not os.path.exists(args.ratings_file):
        from data_builders.sample_ratings import make_sample_ratings

        print(f"Generating the sample team ratings at {args.ratings_file} (first use)")
        made = make_sample_ratings(Path(args.ratings_file).parent, seed=args.synthetic_seed, n_charts=args.sample_charts)
        if Path(made) != Path(args.ratings_file):
            raise UserError(f"sample ratings were written to {made}, but ratings_file is {args.ratings_file}")
    print(f"Building preference pairs from {args.ratings_file} into {args.dataset_name}")
    try:
        pairs, report = build_pairs(args.ratings_file, zscore=args.zscore, min_raters=args.min_raters,
                                    margin=args.rating_margin, pairs=args.pairs, seed=args.synthetic_seed)
    except RatingsError as exc:
        raise UserError(str(exc)) from None
    save_pairs(pairs, report, args.dataset_name)


def load_pairs(args: DpoScriptArguments):
    import datasets

    path = Path(args.dataset_name)
    if not (path / "dataset_dict.json").is_file():
        raise UserError(f"no preference dataset at {args.dataset_name} (build it: python -m data_builders.ratings)")
    splits = datasets.load_from_disk(str(path))
    for split in splits.values():
        missing = [c for c in PREFERENCE_COLUMNS if c not in split.column_names]
        if missing:
            raise UserError(f"{args.dataset_name} lacks column(s) {', '.join(missing)} (needs {', '.join(PREFERENCE_COLUMNS)})")
    train = splits[args.dataset_train_split]
    test = splits[args.dataset_test_split] if args.dataset_test_split in splits else None
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if test is not None and args.max_eval_samples:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    keep = list(PREFERENCE_COLUMNS)
    return train.select_columns(keep), (test.select_columns(keep) if test is not None else None)


def restore_adapter(model, weights: dict[str, torch.Tensor]) -> None:
    """TRL copies the SFT adapter as the reference, then rounds the trainable one to bf16 (QLoRA);
    put the exact fp32 SFT weights back into both, so policy == reference before the first step."""
    params = dict(model.named_parameters())
    for name, value in weights.items():
        for target in (name, name.replace(".default.", ".ref.")):
            if target in params:
                params[target].data = value.clone()


# --- held-out preference accuracy ------------------------------------------------------------
def _sequence_logps(model, batch) -> torch.Tensor:
    """Sum of log-probs of the completion tokens, per sequence."""
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].to(logits.dtype)
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=1)


@torch.no_grad()
def preference_accuracy(model, processor, dataset, beta: float, batch_size: int = 8) -> dict:
    """Does the implicit reward β·(log π − log π_ref) rank chosen above rejected? Ties count half
    (before training π = π_ref, so every pair ties: 50 %)."""
    collator = DataCollatorForVisionPreference(processor)
    reference = "ref" if "ref" in getattr(model, "peft_config", {}) else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wins, margins = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        policy = _sequence_logps(model, batch)
        with use_adapter(model, adapter_name=reference):
            ref = _sequence_logps(model, batch)
        rewards = beta * (policy - ref)
        chosen, rejected = rewards.chunk(2)
        margin = chosen - rejected
        wins += (torch.where(margin > 0, 1.0, torch.where(margin == 0, 0.5, 0.0))).tolist()
        margins += margin.tolist()
    model.train(was_training)
    return {"preference_accuracy": sum(wins) / len(wins), "mean_margin": sum(margins) / len(margins), "n": len(wins)}


# --- job -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args, training_args, model_args, resolved = parse_recipe(argv, DPOConfig, DpoScriptArguments)
    tracking.prepare(training_args, resolved)  # no token as a recipe key; run_name; tracker packages
    ensure_assets(script_args, model_args)
    ensure_pairs(script_args)

    # load
    processor = load_processor(
        model_args, training_args.trust_remote_code, script_args.image_longest_edge, script_args.do_image_splitting
    )
    train_dataset, test_dataset = load_pairs(script_args)
    check_machine(resolved, model_args)
    model = load_model(model_args, training_args.trust_remote_code)
    peft_config = build_lora_config(model_args, script_args.lora_scope)
    if script_args.sft_adapter:
        from peft import PeftModel

        if not (Path(script_args.sft_adapter) / "adapter_config.json").is_file():
            raise UserError(f"sft_adapter: no LoRA adapter in {script_args.sft_adapter} (adapter_config.json missing)")
        model = PeftModel.from_pretrained(model, script_args.sft_adapter, is_trainable=True)
        peft_config = None  # train the SFT adapter further; TRL keeps a frozen copy of it as the reference
    sft_weights = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    # train
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    keep_adapters_fp32(trainer.model)
    trainer.add_callback(FrozenVisionNoGrad())  # no backward through the frozen vision tower
    tracking.start(trainer, resolved, script_args.run_tags, job_type="dpo")  # W&B offline unless a key is set
    if script_args.sft_adapter:
        restore_adapter(trainer.model, sft_weights)
    before = preference_accuracy(trainer.model, processor, test_dataset, training_args.beta) if test_dataset else None
    scores = {}

    def score_and_drop_reference(trainer):
        if test_dataset is not None:
            scores["after"] = preference_accuracy(trainer.model, processor, test_dataset, training_args.beta)
        if "ref" in getattr(trainer.model, "peft_config", {}):
            trainer.model.delete_adapter("ref")  # the reference is the SFT adapter the user already has

    summary = train_and_save(trainer, training_args, model_args, after_training=score_and_drop_reference)
    summary.update({
        "start_adapter": script_args.sft_adapter or "(fresh LoRA)",
        "loss_type": ",".join(training_args.loss_type),
        "beta": training_args.beta,
        "train_pairs": len(train_dataset),
    })
    after = scores.get("after")
    if before and after:
        summary.update({
            "test_pairs": before["n"],
            "pref_accuracy_before_pct": 100 * before["preference_accuracy"],
            "pref_accuracy_after_pct": 100 * after["preference_accuracy"],
            "mean_margin_before": before["mean_margin"],
            "mean_margin_after": after["mean_margin"],
        })
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        write_resolved_recipe(resolved, out / "recipe.yaml", "vlm-tune dpo " + shlex.join(argv))
        if before and after:
            (out / "preference_eval.json").write_text(
                json.dumps({"before": before, "after": after}, indent=2) + "\n", encoding="utf-8"
            )
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print_summary(summary, title="vlm-tune dpo — run summary")
        write_report_safely(out)
    tracking.finish(summary)
    return summary
