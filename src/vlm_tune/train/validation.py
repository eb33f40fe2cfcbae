"""Validation samples during training: the model's *answers* on a fixed set of held-out images.

Loss curves of different configs often look alike; the answers do not. At the start of training
(step 0 = the base model), at every evaluation (`eval_strategy`/`eval_steps`) and at the end,
`ValidationSamples` generates for the same `num_validation_samples` rows of the validation split and

- writes `RUN_DIR/validation/step-XXXXXX.jsonl` (image, prompt, reference, prediction, correct) and the
  images once (`RUN_DIR/validation/images/NNN.png`), read by `vlm-tune report` and `vlm-tune compare`;
- logs `eval_samples_relaxed_accuracy` through `Trainer.log` (so it is in `trainer_state.json`'s log
  history and in every tracker's curves);
- logs a `wandb.Table` (`validation/samples`) and TensorBoard text when those trackers are on.

The rows come from the dataset's `image`/`query`/`label` columns, so the captioner (same SFT path on
scenes with those columns) gets caption samples for free.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.runfiles import ACCURACY_KEY, VALIDATION_DIR, read_steps, step_file  # noqa: F401
from vlm_tune.data.rows import _decode_image, answer_of, get_split
from vlm_tune.core.generation import generate_answers
from vlm_tune.metrics.relaxed_accuracy.relaxed_accuracy import best_correctness

# --- which rows ------------------------------------------------------------------------------
def pick_indices(n_rows: int, n: int) -> list[int]:
    """`n` evenly spaced row indices: fixed across runs and checkpoints, and spread over the split
    (datasets are often grouped by question type, so the first n rows can all be one kind)."""
    n = min(n, n_rows)
    return [round(i * n_rows / n) for i in range(n)] if n > 0 else []


# --- callback --------------------------------------------------------------------------------
class ValidationSamples(TrainerCallback):
    """Generates, scores and logs the fixed validation rows at train begin, each evaluation and train end."""

    def __init__(self, trainer, processor, rows: list[dict], split_name: str, system_prompt: str | None = None,
                 max_new_tokens: int = 32, batch_size: int = 8):
        self.trainer, self.processor, self.rows = trainer, processor, rows
        self.split_name, self.system_prompt = split_name, system_prompt
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.done: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self._save_images(args.output_dir)
        self._run(args, state, model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self._run(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(args, state, model)

    def _save_images(self, output_dir: str) -> None:
        folder = Path(output_dir) / VALIDATION_DIR / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for row in self.rows:
            path = folder / row["image"].split("/")[-1]
            if not path.exists():
                row["pil"].save(path)

    def _run(self, args, state, model) -> None:
        """Every process generates (with FSDP / ZeRO-3 a forward needs all ranks; with DDP the others would
        only wait at the next all-reduce anyway); the main process writes and logs to trackers."""
        step = state.global_step
        if step in self.done or model is None:
            return
        self.done.add(step)
        was_training, used_cache = model.training, getattr(model.config, "use_cache", None)
        # Trainer sets config.use_cache = args.use_cache (False) for training; without the KV cache each
        # generated token re-runs the whole prompt (2-3x slower even on the tiny model).
        model.config.use_cache = True
        try:
            predictions = generate_answers(
                model, self.processor, [r["pil"] for r in self.rows], [r["prompt"] for r in self.rows],
                self.system_prompt, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                desc=f"Validation samples (step {step})",
            )
        finally:
            model.config.use_cache = used_cache
        records = [
            {"step": step, "index": r["index"], "split": self.split_name, "image": r["image"], "prompt": r["prompt"],
             "reference": r["reference"], "labels": r["labels"], "prediction": p,
             "correct": float(best_correctness(r["labels"], p))}
            for r, p in zip(self.rows, predictions)
        ]
        accuracy = sum(r["correct"] for r in records) / max(len(records), 1)
        # Log while the model is still in eval mode: TRL's SFTTrainer.log folds its pending *train*
        # token metrics into whatever is logged in train mode, which would steal them from the next loss line.
        self.trainer.log({ACCURACY_KEY: accuracy})
        model.train(was_training)
        if state.is_world_process_zero:
            atomic_write_text(step_file(args.output_dir, step),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._to_trackers(records, accuracy, step)
            print(f"validation samples at step {step}: relaxed accuracy {100 * accuracy:.1f} % on {len(records)} rows")

    def _to_trackers(self, records: list[dict], accuracy: float, step: int) -> None:
        from vlm_tune.train.tracking import tensorboard_writer, wandb_run

        run = wandb_run()
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "image", "prompt", "reference", "prediction", "correct"])
            for record, row in zip(records, self.rows):
                table.add_data(step, wandb.Image(row["pil"]), record["prompt"], record["reference"],
                               record["prediction"], bool(record["correct"]))
            run.log({"validation/samples": table, "train/global_step": step})
        writer = tensorboard_writer(self.trainer)
        if writer is not None:
            lines = ["| # | prompt | reference | prediction | correct |", "|---|---|---|---|---|"]
            lines += [f"| {r['index']} | {_cell(r['prompt'])} | {_cell(r['reference'])} | {_cell(r['prediction'])} | "
                      f"{'✓' if r['correct'] else '✗'} |" for r in records]
            writer.add_text("validation/samples", "\n".join(lines) + f"\n\nrelaxed accuracy {accuracy:.3f}", step)
            if step == min(self.done):
                import numpy as np

                for row in self.rows:
                    writer.add_image(f"validation/image-{row['index']:03d}", np.asarray(row["pil"]), step,
                                     dataformats="HWC")
            writer.flush()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- attach ----------------------------------------------------------------------------------
def attach(trainer, processor, splits, script_args) -> ValidationSamples | None:
    """Add the callback for `num_validation_samples` rows of the validation split (the test split if the
    dataset has no validation split; nothing if it has neither)."""
    n = script_args.num_validation_samples
    if n <= 0:
        return None
    split_name = next((s for s in (script_args.dataset_val_split, script_args.dataset_test_split) if s in splits), None)
    if split_name is None:
        print(f"note: no '{script_args.dataset_val_split}' or '{script_args.dataset_test_split}' split: "
              "no validation samples during training")
        return None
    split = get_split(splits, split_name, script_args.dataset_name)
    rows = []
    for index in pick_indices(len(split), n):
        row = split[index]
        labels = [row["label"]] if isinstance(row["label"], str) else [str(label) for label in row["label"]]
        rows.append({"index": index, "image": f"images/{index:03d}.png", "pil": _decode_image(row["image"]),
                     "prompt": str(row["query"]), "reference": answer_of(row["label"]), "labels": labels})
    callback = ValidationSamples(trainer, processor, rows, split_name, script_args.system_prompt,
                                 script_args.validation_max_new_tokens,
                                 batch_size=max(1, trainer.args.per_device_eval_batch_size))
    trainer.add_callback(callback)
    return callback
