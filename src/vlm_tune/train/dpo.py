"""`vlm-tune dpo`: team ratings → preference pairs → DPO (TRL's DPOTrainer) with QLoRA.

    vlm-tune dpo --config recipes/tiny/dpo_ratings.yaml [--any_field value ...]

The reference model is never a second copy: a fresh LoRA trains against the same model with
adapters disabled; when starting from an SFT adapter (`sft_adapter:`), TRL keeps a frozen copy of
that adapter ("ref") as the reference, so DPO stays anchored to the SFT policy it refines.
The trainer is TRL's DPOTrainer computing the image features once per pair instead of four times
(`vlm_tune.train.dpo_features`). Pairs: `vlm_tune.train.pairs`; preference accuracy before/after:
`vlm_tune.train.preference_eval`; the steps every training job shares: `vlm_tune.train.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import DPOConfig

from vlm_tune.core.config import VlmScriptArguments
from vlm_tune.core.errors import UserError
from vlm_tune.core.fingerprint import check_base
from vlm_tune.core.modeling import attach_adapter, build_lora_config, check_machine, load_model
from vlm_tune.train.cpu_memory import give_freed_memory_back
from vlm_tune.train.dpo_features import PairVisionDPOTrainer
from vlm_tune.train.pairs import ensure_pairs, load_pairs
from vlm_tune.train.preference_eval import PreferenceEval
from vlm_tune.train.run import Job, load_processor, setup, train_and_report, wire_trainer


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
    force_base: bool = field(
        default=False, metadata={"help": "Refine sft_adapter even if it was trained on other weights (a loud warning)."}
    )


JOB = Job("dpo", DPOConfig, DpoScriptArguments)


# --- policy and reference adapter ------------------------------------------------------------
def start_policy(model, script_args: DpoScriptArguments, model_args):
    """(model, peft_config): a fresh LoRA, or the SFT adapter trained further (no new config: TRL keeps
    a frozen copy of it as the reference)."""
    peft_config = build_lora_config(model_args, script_args.lora_scope)
    if not script_args.sft_adapter:
        return model, peft_config
    base = model_args.model_name_or_path
    # a hub base that was not on this machine before it loaded is checked now (else: checked already, no-op)
    check_base(script_args.sft_adapter, base, model_args.model_revision, script_args.force_base, required=True)
    return attach_adapter(model, script_args.sft_adapter, base, is_trainable=True), None


def restore_adapter(model, weights: dict[str, torch.Tensor]) -> None:
    """TRL copies the SFT adapter as the reference, then rounds the trainable one to bf16 (QLoRA);
    put the exact fp32 SFT weights back into both, so policy == reference before the first step."""
    params = dict(model.named_parameters())
    for name, value in weights.items():
        for target in (name, name.replace(".default.", ".ref.")):
            if target in params:
                params[target].data = value.clone()


def drop_reference(model) -> None:
    """The reference is the SFT adapter the user already has: not saved with the result."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


# --- job -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    run = setup(JOB, argv)
    script_args, training_args, model_args = run.script_args, run.training_args, run.model_args
    give_freed_memory_back(model_args.model_name_or_path)  # CPU, real sizes: peak RSS = a step's use (cpu_memory)
    ensure_pairs(script_args)

    # load (pairs come formatted: images, prompt, chosen, rejected)
    processor = load_processor(run)
    train_dataset, test_dataset = load_pairs(script_args)
    check_machine(run.resolved, model_args)
    if script_args.sft_adapter:  # an adapter for this base (core.fingerprint), checked before the model loads
        if not (Path(script_args.sft_adapter) / "adapter_config.json").is_file():
            raise UserError(f"sft_adapter: no LoRA adapter in {script_args.sft_adapter} (adapter_config.json missing)")
        check_base(script_args.sft_adapter, model_args.model_name_or_path, model_args.model_revision,
                   script_args.force_base)
    model, peft_config = start_policy(load_model(model_args, training_args.trust_remote_code), script_args, model_args)
    sft_weights = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    # trainer (TRL's, with one vision pass per pair)
    trainer = PairVisionDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    wire_trainer(trainer, run)
    if script_args.sft_adapter:
        restore_adapter(trainer.model, sft_weights)
    preference = PreferenceEval(processor, test_dataset, training_args.beta)
    preference.score_before(trainer.model)

    # run
    def after_training(trainer):
        preference.score_after(trainer.model)
        drop_reference(trainer.model)

    def after_saving(trainer, out: Path) -> dict:
        preference.write(out)
        return {
            "start_adapter": script_args.sft_adapter or "(fresh LoRA)",
            "loss_type": ",".join(training_args.loss_type),
            "beta": training_args.beta,
            "train_pairs": len(train_dataset),
            **preference.summary(),
        }

    return train_and_report(run, trainer, after_training, after_saving)
