"""Experiment trackers (`report_to: [wandb, tensorboard]`) and keeping secrets out of everything a run writes.

- **W&B** runs *offline* unless `WANDB_API_KEY` is set or `WANDB_MODE` says otherwise, so a training
  machine without network never fails or hangs on a login prompt; the run lands in
  `RUN_DIR/wandb/offline-run-*` (or under `WANDB_DIR`) and `wandb sync` uploads it later.
- **TensorBoard** event files go to `RUN_DIR/tensorboard/` (or `TENSORBOARD_LOGGING_DIR`).
- Both get the run name (`run_name`, default: the run folder's name), the tags (`run_tags`) and the
  resolved recipe, so a run in the tracker says how it was made.
- Secrets: values of environment variables named like `*_TOKEN`, `*_KEY`, `*SECRET*`, `*PASSWORD*`
  are replaced by `***` in what vlm-tune writes (recipe.yaml, reports, sweep files and logs), and a
  token given as a recipe key (`hub_token`) is refused, because Trainer pickles it into
  `training_args.bin` and trackers record the command line. A secret typed into a text flag
  (`--run_name`, `--run_tags`, ...) is scrubbed from the arguments before the Trainer or a tracker sees
  them, and from the command line W&B records.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml
from transformers import TrainerCallback

from vlm_tune.core.errors import UserError
from vlm_tune.core.secrets import SECRET_RECIPE_KEY, scrub, scrub_argv, scrub_fields

DEFAULT_WANDB_PROJECT = "vlm-tune"


# --- before the trainer ----------------------------------------------------------------------
# TrainingArguments fields that are paths: scrubbing would move the run, not hide a secret.
PATH_FIELDS = ("output_dir", "logging_dir", "resume_from_checkpoint", "deepspeed", "hub_model_id")


def prepare(training_args, resolved: dict, script_args=None) -> None:
    """Checks and defaults that must happen before the Trainer exists: no credential as a recipe key,
    no secret value in a text argument, the tracker packages installed, and a readable run name (the
    run folder's name)."""
    for key, value in resolved.items():
        if key != "env" and SECRET_RECIPE_KEY.match(key) and value:
            raise UserError(
                f"'{key}' would be saved in training_args.bin and in tracker metadata; set it in the environment "
                "instead (HF_TOKEN, WANDB_API_KEY), which vlm-tune never writes"
            )
    scrub_arguments(training_args, script_args)
    # The command line gives one string (`--report_to wandb,tensorboard`); Trainer wants a list.
    report_to = [name.strip() for item in _report_to(training_args) for name in item.split(",") if name.strip()]
    training_args.report_to = report_to
    if "report_to" in resolved:
        resolved["report_to"] = report_to
    for tracker, module in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        if tracker in report_to:
            try:
                __import__(module)
            except ImportError:
                raise UserError(f"report_to {tracker} needs the '{module}' package: pip install {module}") from None
    if not training_args.run_name:
        training_args.run_name = Path(training_args.output_dir).name


def scrub_arguments(training_args, script_args=None) -> None:
    """Secret values typed into text arguments (`--run_name $HF_TOKEN`, a tag) become `***` before Trainer
    pickles TrainingArguments into training_args.bin and trackers record them."""
    changed = scrub_fields(training_args, skip=PATH_FIELDS)
    if script_args is not None and getattr(script_args, "run_tags", None):
        clean = scrub(list(script_args.run_tags))
        if clean != script_args.run_tags:
            script_args.run_tags = clean
            changed.append("run_tags")
    if changed:
        print(f"note: {', '.join(changed)} held the value of a secret environment variable; written as ***",
              file=sys.stderr)


def _report_to(training_args) -> list[str]:
    value = training_args.report_to
    if value in (None, "none"):
        return []
    return [value] if isinstance(value, str) else list(value)


def wandb_mode() -> str | None:
    """'offline' unless the user has an API key in the environment or chose a mode (WANDB_MODE)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None  # wandb reads WANDB_MODE itself; with a key and no mode it goes online
    return "offline"


# --- trackers on -----------------------------------------------------------------------------
def start(trainer, resolved: dict, tags: list[str] | None = None, job_type: str = "sft") -> None:
    """Open the W&B run ourselves (transformers' WandbCallback then reuses it) so that mode, folder,
    name, tags and the resolved recipe are ours; point TensorBoard into the run folder."""
    if not trainer.is_world_process_zero():
        return
    from transformers.integrations import TensorBoardCallback, WandbCallback

    args = trainer.args
    output_dir = Path(args.output_dir)
    recipe = scrub(resolved)
    callbacks = trainer.callback_handler.callbacks
    if any(isinstance(cb, WandbCallback) for cb in callbacks):
        import wandb

        output_dir.mkdir(parents=True, exist_ok=True)
        with scrubbed_sys_argv():  # W&B records the command line in the run's metadata
            wandb.init(
                project=os.environ.get("WANDB_PROJECT", DEFAULT_WANDB_PROJECT),
                name=args.run_name,
                tags=scrub(list(tags or [])) or None,
                config={"recipe": recipe, "run_tags": scrub(list(tags or []))},
                dir=os.environ.get("WANDB_DIR") or str(output_dir),
                mode=wandb_mode(),
                job_type=job_type,
                reinit="finish_previous",
            )
    for cb in callbacks:
        if isinstance(cb, TensorBoardCallback):
            if cb.logging_dir is None:  # TENSORBOARD_LOGGING_DIR not set: inside the run folder, not ./runs/DATE_HOST
                cb.logging_dir = str(output_dir / "tensorboard")
            trainer.add_callback(_TensorBoardRecipe(cb, recipe, args.run_name, scrub(list(tags or []))))


@contextmanager
def scrubbed_sys_argv():
    """sys.argv with secret values blanked while a tracker reads it."""
    original = sys.argv
    sys.argv = scrub_argv(list(original))
    try:
        yield
    finally:
        sys.argv = original


def tensorboard_writer(trainer):
    """The SummaryWriter of transformers' TensorBoardCallback, when `report_to` has tensorboard."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            return getattr(cb, "tb_writer", None)
    return None


def wandb_run():
    """The active W&B run, or None (wandb not imported or not started)."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


class _TensorBoardRecipe(TrainerCallback):
    """Writes the run name, tags and resolved recipe as TensorBoard text once its writer exists."""

    def __init__(self, tb_callback, recipe: dict, run_name: str, tags: list[str]):
        self.tb_callback, self.recipe, self.run_name, self.tags = tb_callback, recipe, run_name, tags

    def on_train_begin(self, args, state, control, **kwargs):
        writer = getattr(self.tb_callback, "tb_writer", None)
        if writer is None or not state.is_world_process_zero:
            return
        text = yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True)
        writer.add_text("recipe", "    " + text.replace("\n", "\n    "), state.global_step)  # 4-space: a code block
        writer.add_text("run", f"name: {self.run_name}  \ntags: {', '.join(self.tags) or '(none)'}", state.global_step)


# --- trackers off ----------------------------------------------------------------------------
def finish(summary: dict | None = None) -> None:
    """Put the run summary (steps, loss, eval scores, memory) into the W&B summary and close the run,
    so the next in-process run (tests, sweeps) starts clean."""
    run = wandb_run()
    if run is None:
        return
    if summary:
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    import wandb

    wandb.finish()
    # finish() returns before W&B's service process has flushed an offline run's records to disk; teardown
    # waits for it, so the run folder is complete (for `wandb sync`, a copy, the next in-process run).
    wandb.teardown()
