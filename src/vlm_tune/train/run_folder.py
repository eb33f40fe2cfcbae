"""One run per folder: what `vlm-tune sft` / `dpo` may do with an `output_dir` that already holds something.

    check_output_dir   before anything is written: a folder holding a run is refused unless the run is
                       replaced (`overwrite_output_dir`, alias `--overwrite`) or continued
                       (`resume_from_checkpoint`); a folder of other files is refused always (a run
                       writes README.md, config.json, tokenizer files, … and would clobber them)
    clear_run          `--overwrite`: the old run's own files go, just before the new run writes;
                       anything else in the folder stays and is named
    plan_resume        `resume_from_checkpoint`: what to continue from — the latest (or the named)
                       checkpoint, or a run that is already complete, which then trains nothing and
                       only finishes its after-training work (eval, summary, report)

Every refusal is one UserError line naming the folder and the way out; nothing is written before it.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.core.io import check_output_path

# --- what a run writes -----------------------------------------------------------------------
# Names (top level of output_dir) that only a training run leaves: one of them makes the folder a run.
RUN_MARKERS = ("recipe.yaml", "run_summary.json", "trainer_state.json", "train_results.json", "all_results.json",
               "training_args.bin", "adapter_config.json", "preference_eval.json", "checkpoint-*", "validation",
               "eval", "wandb", "tensorboard")  # (the trackers' folders: all a run killed at its start leaves)
# Everything a run (and `vlm-tune eval/report` on it) writes there: what --overwrite deletes.
RUN_FILES = RUN_MARKERS + (
    "README.md", "adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model-*.safetensors",
    "model.safetensors.index.json", "pytorch_model*.bin", "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
    "added_tokens.json", "eval_results.json", "report.html", "report.md", "report_files", "wandb", "tensorboard",
    "ref", "eval-*", "captions-*", ".*.tmp", "base_fingerprint.json",
)
# Written beside a run by what launched it, not by the run: neither the run's nor foreign (`vlm-tune sweep`
# opens RUN/sweep.log before the run starts, and keeps appending to it across relaunches).
LAUNCHER_FILES = ("sweep.log",)
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def run_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the run's own entries, the other visible entries) at the top of `folder`; hidden files
    (.gitkeep, .DS_Store) and a launcher's log count as neither, unless they are our interrupted writes."""
    own, other = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in LAUNCHER_FILES:
            continue
        if _matches(entry.name, RUN_FILES):
            own.append(entry)
        elif not entry.name.startswith("."):
            other.append(entry)
    return own, other


def _names(entries: list[Path], limit: int = 4) -> str:
    shown = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:limit])
    return shown + (f", … ({len(entries)} in all)" if len(entries) > limit else "")


# --- the folder before a run -----------------------------------------------------------------
def describe_run(out: Path) -> str:
    """'a finished run (10 steps)', 'an unfinished run (last checkpoint: checkpoint-4)', ..."""
    summary = out / "run_summary.json"
    if summary.is_file():
        try:
            steps = json.loads(summary.read_text(encoding="utf-8")).get("steps", "?")
        except (ValueError, AttributeError, OSError):
            steps = "?"
        return f"a finished run ({steps} steps)"
    checkpoints = sorted(out.glob("checkpoint-*"), key=_checkpoint_number)
    if checkpoints:
        return f"an unfinished run (last checkpoint: {checkpoints[-1].name})"
    return "an unfinished run with no checkpoint"


def check_output_dir(training_args, overwrite: bool) -> None:
    """Refuse, before anything is written, an output_dir that would mix two runs or clobber other files."""
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if overwrite and resume:
        raise UserError("overwrite_output_dir and resume_from_checkpoint are both set: "
                        "choose one (replace the run, or continue it)")
    check_output_path(out, "output_dir", folder=True)  # a file there, a file above, read-only
    if resume is True or (resume and Path(resume).resolve().parent == out.resolve()):
        return  # continuing the run in this folder: plan_resume checks what there is to continue
    if not out.is_dir():
        return
    own, other = run_entries(out)
    if not own and not other:
        return
    if not any(_matches(e.name, RUN_MARKERS) for e in own):
        raise UserError(f"output_dir {out} is not empty and holds no vlm-tune run ({_names(own + other)}); "
                        f"choose a new or empty folder (a run writes README.md, config and tokenizer files there)")
    if not overwrite:
        run = describe_run(out)
        resumable = "with no checkpoint" not in run
        raise UserError(f"output_dir {out} already holds {run}; pass --overwrite (replace it), "
                        + ("--resume_from_checkpoint true (continue it), " if resumable else "")
                        + "or choose another output_dir")


def clear_run(out: Path) -> None:
    """--overwrite: delete the old run's own files; say what else stays in the folder."""
    if not out.is_dir():
        return
    own, other = run_entries(out)
    for entry in own:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    print(f"overwrite: removed the previous run in {out} ({len(own)} entries)", file=sys.stderr)
    if other:
        print(f"overwrite: kept {len(other)} file(s) that are not the run's: {_names(other)}", file=sys.stderr)


# --- resume ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Saved:
    """A saved training state: a checkpoint-N folder, or the run folder of a run that got to the end."""

    folder: Path
    step: int
    max_steps: int  # what that run had planned
    epochs: float


@dataclass(frozen=True)
class ResumePlan:
    step: int  # the step the run continues from
    checkpoint: str | None  # hand to Trainer.train (None: nothing left to train)
    complete: Saved | None  # already at its planned end: load these weights and finish the after-training work


def _checkpoint_number(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def read_saved(folder: Path) -> Saved | None:
    """The trainer_state.json of a folder (None when it has none); a corrupt one is one line naming it."""
    path = folder / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        return Saved(folder, int(state["global_step"]), int(state.get("max_steps") or 0),
                     float(state.get("num_train_epochs") or 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a readable trainer state ({type(exc).__name__}: {exc}); "
                        f"resume from another checkpoint or start over with --overwrite") from None


def is_complete(saved: Saved, training_args) -> bool:
    """Whether a saved state already reached the end this run plans (max_steps, else its epochs)."""
    if training_args.max_steps > 0:
        return saved.step >= training_args.max_steps
    return saved.max_steps > 0 and saved.step >= saved.max_steps and math.ceil(training_args.num_train_epochs) <= saved.epochs


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHTS)


def _checkpoint_saved(path: Path) -> Saved:
    if not path.is_dir():
        raise UserError(f"resume_from_checkpoint: no checkpoint at {path}")
    saved = read_saved(path)
    if saved is None or not _has_weights(path):
        raise UserError(f"resume_from_checkpoint: {path} is not a checkpoint (no trainer_state.json and weights)")
    return saved


def plan_resume(training_args, model_args=None) -> ResumePlan | None:
    """What `resume_from_checkpoint` continues from (None: not resuming); refused in one line when
    there is nothing to continue."""
    resume = training_args.resume_from_checkpoint
    if not resume:
        return None
    if resume is not True:
        saved = _checkpoint_saved(Path(resume))
        _check_same_lora(saved.folder, model_args)
        done = is_complete(saved, training_args)
        return ResumePlan(saved.step, None if done else str(saved.folder), saved if done else None)
    out = Path(training_args.output_dir)
    if not out.is_dir():
        raise UserError(f"nothing to resume: output_dir {out} does not exist (drop --resume_from_checkpoint to start)")
    checkpoints = [p for p in sorted(out.glob("checkpoint-*"), key=_checkpoint_number) if p.is_dir()]
    checkpoint = _checkpoint_saved(checkpoints[-1]) if checkpoints else None
    finished = read_saved(out) if _has_weights(out) else None
    for saved in (finished, checkpoint):  # the finished run first: its weights are the final ones
        if saved is not None and is_complete(saved, training_args):
            _check_same_lora(saved.folder, model_args)
            return ResumePlan(saved.step, None, saved)
    if checkpoint is None:
        ended = f"the run ended at step {finished.step} and has " if finished else "there is "
        raise UserError(f"nothing to resume in {out}: {ended}no checkpoint-N folder to continue from "
                        f"(save_strategy: no?); start over with --overwrite")
    _check_same_lora(checkpoint.folder, model_args)
    return ResumePlan(checkpoint.step, str(checkpoint.folder), None)


def _check_same_lora(folder: Path, model_args) -> None:
    """A checkpoint continues only with the LoRA shape it was trained with (else peft fails with a wall
    of size mismatches)."""
    config_path = folder / "adapter_config.json"
    if model_args is None or not getattr(model_args, "use_peft", False) or not config_path.is_file():
        return
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{config_path}: not valid JSON") from None
    for key, saved_key in (("lora_r", "r"), ("lora_alpha", "lora_alpha")):
        if saved.get(saved_key) is not None and saved.get(saved_key) != getattr(model_args, key):
            raise UserError(f"{folder} was trained with {key} {saved[saved_key]}, this run asks for "
                            f"{getattr(model_args, key)}: resume with the same LoRA settings, or start over with "
                            f"--overwrite")
