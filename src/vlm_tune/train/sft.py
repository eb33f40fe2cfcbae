"""`vlm-tune sft`: recipe → (tiny model / synthetic data on first use) → load → format → train → save
→ held-out eval (`eval_after_train`: base, text-only prior and tuned model on the test split).

    vlm-tune sft --config recipes/tiny/sft_chartqa.yaml [--any_field value ...]

The steps every training job shares (setup, trainer wiring, train → save → summary → recipe.yaml →
report) are in `vlm_tune.train.run`.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from vlm_tune.core.modeling import build_lora_config, check_machine, load_model
from vlm_tune.data.rows import check_rows, get_split, load_splits, to_prompt_completion
from vlm_tune.train.run import Job, load_processor, setup, train_and_report, wire_trainer
from vlm_tune.train.validation import pick_indices

JOB = Job("sft", SFTConfig, multi_process=True, throughput=True)


# --- data checks -----------------------------------------------------------------------------
def check_splits(splits, script_args, training_args) -> None:
    """Every row this run will touch — train, val (eval loss), the validation samples, the held-out test
    split — checked before the model loads, so a bad row cannot surface after training. Cheap: labels
    are read and images verified, not decoded (a few seconds for all of ChartQA)."""
    name = script_args.dataset_name

    def check(split_name: str, limit: int | None = None, sample: int | None = None) -> None:
        split = get_split(splits, split_name, name, limit)  # missing, empty, wrong column types
        indices = pick_indices(len(split), sample) if sample else None
        check_rows(split, f"{name} [{split_name}]", indices)

    check(script_args.dataset_train_split, script_args.max_train_samples)
    if training_args.eval_strategy != "no":
        check(script_args.dataset_val_split, script_args.max_eval_samples)
    if script_args.num_validation_samples > 0:  # the rows validation.attach picks (val, else test)
        samples_split = next((s for s in (script_args.dataset_val_split, script_args.dataset_test_split)
                              if s in splits), None)
        if samples_split is not None:
            check(samples_split, sample=script_args.num_validation_samples)
    if script_args.eval_after_train:
        check(script_args.dataset_test_split, script_args.max_eval_samples)


# --- held-out evaluation ---------------------------------------------------------------------
def evaluate_after_training(trainer, processor, splits, script_args, out: Path) -> dict:
    """Base (adapters off), text-only prior and tuned model on the test split, one table."""
    from vlm_tune.data.scoring import evaluate_prior, evaluate_split, format_table, text_only_prior, write_results

    test = get_split(splits, script_args.dataset_test_split, script_args.dataset_name, script_args.max_eval_samples)
    train = get_split(splits, script_args.dataset_train_split, script_args.dataset_name, script_args.max_train_samples)
    model = trainer.model
    results = {}
    with model.disable_adapter():
        records, results["base"] = evaluate_split(model, processor, test, script_args.system_prompt, desc="Eval base")
    write_results(out / "eval" / "base", records, results["base"])
    records, results["text-only prior"] = evaluate_prior(text_only_prior(train), test)
    write_results(out / "eval" / "prior", records, results["text-only prior"])
    records, results["tuned"] = evaluate_split(model, processor, test, script_args.system_prompt, desc="Eval tuned")
    write_results(out / "eval" / "tuned", records, results["tuned"])
    table = format_table(results)
    (out / "eval" / "table.md").write_text(table + "\n", encoding="utf-8")
    print("\nHeld-out " + script_args.dataset_test_split + " split\n" + table)
    return {name: metrics["relaxed_accuracy"] for name, metrics in results.items()}


def held_out_eval_entries(trainer, out: Path, processor, splits, script_args) -> dict:
    """The held-out scores as run-summary entries (`eval_tuned_pct`, ...) and the time they took."""
    started = time.perf_counter()
    scores = evaluate_after_training(trainer, processor, splits, script_args, out)
    entries = {f"eval_{name.replace(' ', '_').replace('-', '_')}_pct": 100 * v for name, v in scores.items()}
    entries["eval_seconds"] = time.perf_counter() - started
    return entries


# --- job -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    run = setup(JOB, argv)
    script_args, training_args, model_args = run.script_args, run.training_args, run.model_args

    # load (the processor first: a missing model or unreachable hub is the first thing to report)
    processor = load_processor(run)
    splits = load_splits(script_args.dataset_name, script_args.dataset_config)
    train_split = get_split(splits, script_args.dataset_train_split, script_args.dataset_name, script_args.max_train_samples)
    eval_split = None
    if training_args.eval_strategy != "no":
        eval_split = get_split(splits, script_args.dataset_val_split, script_args.dataset_name, script_args.max_eval_samples)
    check_splits(splits, script_args, training_args)  # every split and row the run uses, before the model loads
    check_machine(run.resolved, model_args)
    model = load_model(model_args, training_args.trust_remote_code, script_args.train_vision_tower)

    # format
    where = f"{script_args.dataset_name} [{{}}]"
    train_dataset = to_prompt_completion(train_split, script_args.system_prompt, where.format(script_args.dataset_train_split))
    eval_dataset = None
    if eval_split is not None:
        eval_dataset = to_prompt_completion(eval_split, script_args.system_prompt, where.format(script_args.dataset_val_split))

    # trainer
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=build_lora_config(model_args, script_args.lora_scope),
        callbacks=callbacks,
    )
    wire_trainer(trainer, run, processor, splits)  # + validation samples from the splits

    # run (the held-out eval once the adapter and recipe.yaml are saved)
    held_out_eval = partial(held_out_eval_entries, processor=processor, splits=splits, script_args=script_args)
    return train_and_report(run, trainer, after_saving=held_out_eval if script_args.eval_after_train else None)
