"""`vlm-tune plan --measure`: check the estimate against the real thing — one forward pass of the
recipe's local model on the worst-case batch, through the same loading, LoRA and loss as `vlm-tune sft`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from vlm_tune.core.errors import UserError
from vlm_tune.plan.memory import MB


# --- trainer ---------------------------------------------------------------------------------
def _one_step_trainer(dataset, processor, model_args, script_args, training_args, output_dir: str):
    """An SFTTrainer set up as `vlm-tune sft` sets it up (LoRA, fp32 adapters, checkpointing), for one step."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy
    from trl import SFTTrainer

    from vlm_tune.core.modeling import build_lora_config, keep_adapters_fp32, load_model

    training_args.output_dir, training_args.report_to, training_args.max_steps = output_dir, [], 1
    training_args.eval_strategy, training_args.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
    model = load_model(model_args, training_args.trust_remote_code, script_args.train_vision_tower)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=processor,
                         peft_config=build_lora_config(model_args, script_args.lora_scope))
    keep_adapters_fp32(trainer.model)
    if training_args.gradient_checkpointing:  # Trainer.train() switches it on; do as it does
        kwargs = getattr(training_args, "activation_checkpointing_kwargs", None) or \
            training_args.gradient_checkpointing_kwargs
        trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(kwargs or {}) or None)
    return trainer


# --- measure ---------------------------------------------------------------------------------
def measure_activations(rows: list[dict], tokens_seq: list[int], processor, model_args, script_args,
                        training_args) -> dict:
    """One forward pass of the recipe's model on the worst-case batch (the longest sampled rows), through
    the same loading, LoRA and loss as `vlm-tune sft`; returns what autograd keeps for backward (unique
    storages, parameters excluded) and, on CUDA, the peak allocated over load, forward, backward and one
    optimizer step (what `peak_gpu_mb` of a run reports)."""
    import tempfile

    import datasets

    from vlm_tune.core.modeling import count_parameters, is_4bit, stored_values

    if not os.path.isdir(os.path.expanduser(model_args.model_name_or_path)):
        raise UserError(f"--measure needs the model on disk; {model_args.model_name_or_path} is not a local folder")
    b = training_args.per_device_train_batch_size
    worst = [rows[k] for k in np.argsort(tokens_seq)[::-1][:b]]
    worst = (worst * b)[:b]
    dataset = datasets.Dataset.from_list([dict(r) for r in worst])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _one_step_trainer(dataset, processor, model_args, script_args, training_args, tmp)
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
        quantized = sum(stored_values(p) for p in trainer.model.parameters() if is_4bit(p))
        result = {"batch": b, "sequence_length": int(batch["input_ids"].shape[1]),
                  "activations_stored": round(sum(kept.values()) / MB, 1),
                  "trainable_params": trainable, "quantized_linear_weights": quantized}
        if cuda:
            result["peak_gpu_allocated"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return result
