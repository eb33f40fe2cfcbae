"""Recipes: YAML files parsed with TRL's `TrlParser` into our script arguments + a TRL config + `ModelConfig`.

CLI flags override YAML values (`vlm-tune sft --config R.yaml --learning_rate 1e-4`). Every problem
(missing file, bad YAML, unknown key or flag) becomes one `UserError` line naming the file and key.
"""

from __future__ import annotations

import difflib
import enum
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from trl import ModelConfig, ScriptArguments, TrlParser

from vlm_tune.core.errors import UserError

LORA_SCOPES = ("lm", "lm+connector", "all")
# synthetic_builder name → builder module (each saves ChartQA's columns image/query/label, so one SFT path serves all)
SYNTHETIC_BUILDERS = ("chartqa", "scenes")  # data_builders modules; vlm_tune.data.assets builds them


# --- script arguments ------------------------------------------------------------------------
@dataclass
class VlmScriptArguments(ScriptArguments):
    """TRL's script arguments (dataset_name, splits, …) plus what vision-language recipes need."""

    dataset_val_split: str = field(default="val", metadata={"help": "Validation split (ChartQA on the hub: 'val')."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message before each question."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows of val/test."})
    lora_scope: str = field(
        default="lm",
        metadata={
            "help": "Where LoRA goes: 'lm' (text attention + MLP), 'lm+connector', 'all' (+ vision encoder). "
            "lora_target_modules, if set, narrows the names inside the scope.",
            "choices": list(LORA_SCOPES),
        },
    )
    train_vision_tower: bool = field(
        default=False, metadata={"help": "Full fine-tuning only (use_peft false): also train the vision encoder."}
    )
    image_longest_edge: int | None = field(
        default=None,
        metadata={"help": "Resize images so the longest edge is this many px before splitting (SmolVLM: N×512)."},
    )
    do_image_splitting: bool | None = field(
        default=None, metadata={"help": "Split images into encoder-sized tiles (+1 global). None: processor default."}
    )
    eval_after_train: bool = field(
        default=False,
        metadata={"help": "After training, score base model, text-only prior and tuned model on dataset_test_split."},
    )
    build_tiny_model: bool = field(
        default=False, metadata={"help": "Build the tiny SmolVLM-architecture model at model_name_or_path if missing."}
    )
    tiny_model_seed: int = field(default=0, metadata={"help": "Seed of the tiny model built on first use."})
    synthetic_dataset: bool = field(
        default=False, metadata={"help": "Build the synthetic ChartQA dataset at dataset_name if missing."}
    )
    synthetic_builder: str = field(
        default="chartqa",
        metadata={"help": "Which synthetic set: 'chartqa' (charts + questions) or 'scenes' (shapes + captions/tags).",
                  "choices": list(SYNTHETIC_BUILDERS)},
    )
    synthetic_sizes: list[int] = field(
        default_factory=lambda: [600, 100, 200], metadata={"help": "train val test sizes of the synthetic dataset."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic dataset."})
    synthetic_types: list[str] | None = field(
        default=None, metadata={"help": "Question types of the synthetic dataset (None: all the builder has)."}
    )
    synthetic_image_size: int = field(default=160, metadata={"help": "Side in px of the synthetic chart images."})
    num_validation_samples: int = field(
        default=8,
        metadata={"help": "Held-out rows whose generated answers are logged at step 0, every evaluation and the end "
                          "(RUN_DIR/validation/, trackers); 0: none."},
    )
    validation_max_new_tokens: int = field(
        default=32, metadata={"help": "Generation budget of the validation samples (captions need more than answers)."}
    )
    run_tags: list[str] | None = field(
        default=None, metadata={"help": "Tags of the run in the tracker (W&B tags, TensorBoard text)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in output_dir (its own files are deleted first; other files are "
                          "kept). Without it, or resume_from_checkpoint, a folder holding a run is refused. "
                          "Command-line alias: --overwrite."},
    )


# --- parse -----------------------------------------------------------------------------------
class _Parser(TrlParser):
    def error(self, message: str):  # argparse would print the whole usage (hundreds of flags) and exit
        raise UserError(message)


def _known_keys(dataclass_types) -> set[str]:
    return {f.name for cls in dataclass_types for f in fields(cls)}


# --- did you mean ----------------------------------------------------------------------------
# Names users carry over from other tools, and what they are called here.
SYNONYMS = {"lora_rank": "lora_r", "rank": "lora_r", "r": "lora_r", "lora_dim": "lora_r", "lr": "learning_rate",
            "batch_size": "per_device_train_batch_size", "train_batch_size": "per_device_train_batch_size",
            "epochs": "num_train_epochs", "model": "model_name_or_path", "dataset": "dataset_name",
            "overwrite": "overwrite_output_dir", "resume": "resume_from_checkpoint", "steps": "max_steps"}
# Command-line spellings that stand for a key (`--overwrite` is what caption and export call it).
CLI_ALIASES = {"overwrite": "overwrite_output_dir"}


def suggest(key: str, known: set[str], preferred: set[str]) -> str | None:
    """The key a typo most likely meant: a known synonym, else a close match among our own and the LoRA /
    model keys (so `lora_rank` is `lora_r`, not TrainingArguments' `local_rank`), else among all keys."""
    if SYNONYMS.get(key) in known:
        return SYNONYMS[key]
    close = difflib.get_close_matches(key, preferred, n=1, cutoff=0.75) or difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def _with_aliases(argv: list[str]) -> list[str]:
    """`--overwrite` → `--overwrite_output_dir` (also `--overwrite=true`); values are left alone."""
    out = []
    for arg in argv:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        out.append(f"--{CLI_ALIASES[name]}{eq}{value}" if name in CLI_ALIASES else arg)
    return out


def _read_recipe(path: str, known: set[str], preferred: set[str]) -> dict[str, Any]:
    recipe_path = Path(path)
    if not recipe_path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of key: value")
    for key in recipe:
        if key != "env" and key not in known:
            close = suggest(str(key), known, preferred)
            hint = f" (did you mean '{close}'?)" if close else ""
            raise UserError(f"{path}: unknown key '{key}'{hint}")
    return recipe


def _asked(recipe: dict, argv: list[str], key: str) -> bool:
    """Whether the recipe or the command line (which wins) switches a boolean flag on."""
    value = recipe.get(key)
    for i, arg in enumerate(argv):
        if arg == f"--{key}":
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return str(value).lower() in ("true", "1", "yes")


def _cli_keys(argv: list[str]) -> list[str]:
    return [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and arg != "--config"]


def parse_recipe(
    argv: list[str], training_config_cls, script_args_cls=VlmScriptArguments
) -> tuple[VlmScriptArguments, Any, ModelConfig, dict]:
    """Parse `--config RECIPE.yaml [--key value ...]`; return the three dataclasses and the resolved recipe."""
    dataclass_types = (script_args_cls, training_config_cls, ModelConfig)
    known = _known_keys(dataclass_types)
    preferred = _known_keys((script_args_cls, ModelConfig))
    argv = _with_aliases(list(argv))
    if "--config" not in argv or argv.index("--config") == len(argv) - 1:
        raise UserError("no recipe given: pass --config RECIPE.yaml (see recipes/)")
    recipe_path = argv[argv.index("--config") + 1]
    recipe = _read_recipe(recipe_path, known, preferred)
    for key in _cli_keys(argv):
        if key not in known and key not in ("help", "h"):
            close = suggest(key, known, preferred)
            raise UserError(f"unknown flag --{key}" + (f" (did you mean --{close}?)" if close else ""))

    parser = _Parser(dataclass_types)
    # Machine-dependent defaults that a recipe may still override: bf16 mixed precision and pinned
    # memory only where a CUDA GPU has them (TRL defaults to bf16 everywhere, which fails on CPU),
    # and non-reentrant activation checkpointing (reentrant breaks with frozen inputs + LoRA).
    cuda = torch.cuda.is_available()
    cuda_bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    parser.set_defaults(bf16=cuda_bf16, dataloader_pin_memory=cuda, gradient_checkpointing_kwargs={"use_reentrant": False})
    # Half precision this machine can't do is parsed as off and reported later by
    # modeling.check_machine (after the model is found), from the resolved recipe.
    parse_argv = list(argv)
    if _asked(recipe, argv, "bf16") and not cuda_bf16:
        parse_argv += ["--bf16", "false"]
    if _asked(recipe, argv, "fp16") and not cuda:
        parse_argv += ["--fp16", "false"]
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=parse_argv)
    except ValueError as exc:  # TrainingArguments' own checks; some span several lines
        raise UserError(f"{recipe_path}: {' '.join(str(exc).split())}") from None
    # 'resume_from_checkpoint: true' means the latest checkpoint in output_dir (Trainer wants True).
    if str(training_args.resume_from_checkpoint).lower() in ("true", "latest"):
        training_args.resume_from_checkpoint = True
    elif str(training_args.resume_from_checkpoint).lower() in ("false", "none", ""):
        training_args.resume_from_checkpoint = None
    if script_args.synthetic_builder not in SYNTHETIC_BUILDERS:
        raise UserError(f"{recipe_path}: synthetic_builder must be one of {', '.join(SYNTHETIC_BUILDERS)}, "
                        f"not '{script_args.synthetic_builder}'")
    if script_args.lora_scope not in LORA_SCOPES:
        raise UserError(f"{recipe_path}: lora_scope must be one of {', '.join(LORA_SCOPES)}, not '{script_args.lora_scope}'")
    check_numbers((script_args, training_args, model_args), recipe_path, _cli_keys(argv))

    # The resolved recipe: every key the YAML or the command line set, with its final value.
    # (overwrite_output_dir is what this launch does to its folder, not how the run was made: a recipe.yaml
    # reused as --config must not replace another folder's run; the command line above it still says it)
    set_keys = [k for k in recipe if k not in ("env", "overwrite_output_dir")]
    set_keys += [k for k in _cli_keys(argv) if k not in recipe and k != "overwrite_output_dir"]
    values = {}
    for obj in (script_args, training_args, model_args):
        values.update({f.name: getattr(obj, f.name) for f in fields(obj)})
    resolved = {key: _plain(values[key]) for key in set_keys}
    for key in ("bf16", "fp16"):
        if _asked(recipe, argv, key):
            resolved[key] = True
    if "env" in recipe:
        resolved = {"env": recipe["env"], **resolved}
    return script_args, training_args, model_args, resolved


# --- numbers the libraries would reject later -----------------------------------------------
# key → (test, what it must be). A negative batch size or rank otherwise surfaces deep in a DataLoader
# or peft, after the model is loaded; a seed outside numpy's range at the first optimizer step.
_SEED = (lambda v: 0 <= v < 2**32, "between 0 and 2**32 - 1")
NUMBER_RULES = {
    "per_device_train_batch_size": (lambda v: v >= 1, "at least 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "lora_r": (lambda v: v >= 1, "at least 1"),
    "lora_alpha": (lambda v: v > 0, "positive"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "learning_rate": (lambda v: v >= 0, "0 or more"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "warmup_steps": (lambda v: v >= 0, "0 or more"),
    "max_grad_norm": (lambda v: v >= 0, "0 or more"),
    "max_steps": (lambda v: v == -1 or v >= 1, "at least 1 (or -1: num_train_epochs decides)"),
    "logging_steps": (lambda v: v > 0, "positive"),
    "save_steps": (lambda v: v > 0, "positive"),
    "eval_steps": (lambda v: v > 0, "positive"),
    "save_total_limit": (lambda v: v >= 1, "at least 1 (or null: keep every checkpoint)"),
    "dataloader_num_workers": (lambda v: v >= 0, "0 or more"),
    "seed": _SEED, "data_seed": _SEED, "tiny_model_seed": _SEED, "synthetic_seed": _SEED,
    "max_train_samples": (lambda v: v >= 1, "at least 1 (or null: all rows)"),
    "max_eval_samples": (lambda v: v >= 1, "at least 1 (or null: all rows)"),
    "num_validation_samples": (lambda v: v >= 0, "0 or more"),
    "validation_max_new_tokens": (lambda v: v >= 1, "at least 1"),
    "image_longest_edge": (lambda v: v >= 1, "at least 1 px (or null: the processor's default)"),
    "max_length": (lambda v: v >= 1, "at least 1 (or null: no truncation)"),
    "synthetic_image_size": (lambda v: v >= 16, "at least 16 px"),
    "synthetic_sizes": (lambda v: len(v) == 3 and all(n >= 0 for n in v), "three row counts ≥ 0 (train val test)"),
    "beta": (lambda v: v > 0, "positive"),  # DPO
}


def check_numbers(objects, recipe_path: str, cli_keys: list[str]) -> None:
    """One line for a number out of range, naming the key and where it was set (flag or recipe)."""
    for obj in objects:
        for name, (ok, want) in NUMBER_RULES.items():
            value = getattr(obj, name, None)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float, list)) or ok(value):
                continue
            where = f"--{name} on the command line" if name in cli_keys else recipe_path
            raise UserError(f"{name} must be {want}, not {_plain(value)} ({where})")
    training_args = objects[1]
    if getattr(training_args, "max_steps", -1) == -1 and getattr(training_args, "num_train_epochs", 1) <= 0:
        raise UserError(f"num_train_epochs must be positive when max_steps is -1, not {training_args.num_train_epochs}")


def _plain(value):
    """YAML-safe form of a dataclass value (enums → their value, tuples → lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def write_resolved_recipe(resolved: dict, path: str | os.PathLike, command: str) -> None:
    # no token or key in a run folder (the env: section included)
    from vlm_tune.core.secrets import scrub, scrub_text

    resolved, command = scrub(resolved), scrub_text(command)
    text = f"# Resolved recipe of this run (YAML + command-line overrides). Re-run with:\n#   {command}\n"
    text += yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")
