"""Every recipe parses; bad recipes and flags give one clear error naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from trl import DPOConfig, SFTConfig

from vlm_tune.core.errors import UserError
from vlm_tune.train.dpo import DpoScriptArguments
from vlm_tune.core.config import VlmScriptArguments, parse_recipe, write_resolved_recipe

REPO = Path(__file__).resolve().parents[2]
# recipes/accelerate/ holds accelerate launch configs, not training recipes (tests/test_multiprocess.py checks them).
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")
# A recipe's header names its command; the command decides the dataclasses it is parsed into.
PARSERS = {"sft": (SFTConfig, VlmScriptArguments), "dpo": (DPOConfig, DpoScriptArguments)}


def test_recipes_exist():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert {
        "tiny/sft_chartqa.yaml",
        "smolvlm-256m/sft_chartqa.yaml",
        "smolvlm-500m/sft_chartqa.yaml",
        "smolvlm-2.2b/sft_chartqa.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_every_recipe_parses(recipe, tmp_path):
    text = recipe.read_text()
    launch = re.search(r"^# Launch:\s+vlm-tune (\w+) --config (\S+)", text, re.M)
    assert launch, "each recipe's header holds its launch command"
    assert launch.group(2) == recipe.relative_to(REPO).as_posix()
    training_config, script_arguments = PARSERS[launch.group(1)]
    # GPU recipes ask for bf16; parsing must not depend on this machine having a GPU.
    script_args, training_args, model_args, resolved = parse_recipe(
        ["--config", str(recipe), "--bf16", "false", "--output_dir", str(tmp_path)], training_config, script_arguments
    )
    assert model_args.model_name_or_path and script_args.dataset_name
    assert training_args.max_length is None, "image tokens must never be truncated"
    assert training_args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert set(yaml.safe_load(text)) <= set(resolved)


def test_real_recipes_use_4bit_nf4_double_quant_and_lm_scope():
    for recipe in RECIPES:
        if recipe.parent.name.startswith("smolvlm") and recipe.name.startswith("sft"):
            config = yaml.safe_load(recipe.read_text())
            assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == "nf4"
            assert config["use_bnb_nested_quant"] and config["dtype"] == "bfloat16"
            assert config["lora_scope"] == "lm" and config["gradient_checkpointing"]
            assert config["gradient_accumulation_steps"] > 1


def test_cli_overrides_yaml(tmp_path):
    recipe = REPO / "recipes/tiny/sft_chartqa.yaml"
    script_args, training_args, model_args, resolved = parse_recipe(
        ["--config", str(recipe), "--learning_rate", "1e-5", "--lora_r", "4", "--output_dir", str(tmp_path)],
        SFTConfig,
    )
    assert training_args.learning_rate == 1e-5 and model_args.lora_r == 4
    assert resolved["learning_rate"] == 1e-5 and resolved["lora_r"] == 4


def test_resolved_recipe_round_trips(tmp_path):
    recipe = REPO / "recipes/tiny/sft_chartqa.yaml"
    argv = ["--config", str(recipe), "--learning_rate", "1e-5", "--output_dir", str(tmp_path / "run")]
    _, training_args, model_args, resolved = parse_recipe(argv, SFTConfig)
    write_resolved_recipe(resolved, tmp_path / "recipe.yaml", "vlm-tune sft " + " ".join(argv))
    _, training_args2, model_args2, _ = parse_recipe(["--config", str(tmp_path / "recipe.yaml")], SFTConfig)
    assert training_args2.learning_rate == training_args.learning_rate
    assert training_args2.lr_scheduler_type == training_args.lr_scheduler_type
    assert model_args2 == model_args


@pytest.mark.parametrize(
    "content, message",
    [
        ("learning_rat: 0.1\n", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("lora_scope: vision\n", "lora_scope must be one of"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("a: [1,\n", "not valid YAML"),
    ],
)
def test_bad_recipe_is_one_clear_error(tmp_path, content, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content)
    with pytest.raises(UserError, match=None) as excinfo:
        parse_recipe(["--config", str(recipe)], SFTConfig)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_missing_recipe_and_unknown_flag(tmp_path):
    with pytest.raises(UserError, match="recipe file not found: nope.yaml"):
        parse_recipe(["--config", "nope.yaml"], SFTConfig)
    with pytest.raises(UserError, match="no recipe given"):
        parse_recipe([], SFTConfig)
    with pytest.raises(UserError, match="unknown flag --lora_rank"):
        parse_recipe(["--config", str(REPO / "recipes/tiny/sft_chartqa.yaml"), "--lora_rank", "8"], SFTConfig)


@pytest.mark.parametrize("flag, meant", [("lora_rank", "lora_r"), ("lora_scop", "lora_scope"),
                                         ("learning_rat", "learning_rate"), ("overwrite_output", "overwrite_output_dir"),
                                         ("batch_size", "per_device_train_batch_size")])
def test_did_you_mean_prefers_our_and_lora_keys(flag, meant):
    with pytest.raises(UserError) as excinfo:
        parse_recipe(["--config", str(REPO / "recipes/tiny/sft_chartqa.yaml"), f"--{flag}", "8"], SFTConfig)
    assert f"unknown flag --{flag} (did you mean --{meant}?)" == str(excinfo.value)


@pytest.mark.parametrize("flag, value, message", [
    ("per_device_train_batch_size", "-1", "per_device_train_batch_size must be at least 1, not -1"),
    ("gradient_accumulation_steps", "0", "gradient_accumulation_steps must be at least 1, not 0"),
    ("lora_r", "-4", "lora_r must be at least 1, not -4"),
    ("lora_dropout", "1.5", "lora_dropout must be in [0, 1), not 1.5"),
    ("max_steps", "0", "max_steps must be at least 1"),
    ("seed", "-1", "seed must be between 0 and 2**32 - 1, not -1"),
    ("max_eval_samples", "0", "max_eval_samples must be at least 1"),
    ("learning_rate", "-0.001", "learning_rate must be 0 or more"),
])
def test_numbers_the_libraries_reject_later_are_one_line(flag, value, message):
    with pytest.raises(UserError) as excinfo:
        parse_recipe(["--config", str(REPO / "recipes/tiny/sft_chartqa.yaml"), f"--{flag}", value], SFTConfig)
    assert message in str(excinfo.value) and f"--{flag} on the command line" in str(excinfo.value)


def test_bad_number_in_the_recipe_names_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text((REPO / "recipes/tiny/sft_chartqa.yaml").read_text() + "\nlora_alpha: -2\n")
    with pytest.raises(UserError, match=f"lora_alpha must be positive, not -2 \\({recipe}\\)"):
        parse_recipe(["--config", str(recipe)], SFTConfig)


def test_overwrite_flag_and_its_alias(tmp_path):
    recipe = str(REPO / "recipes/tiny/sft_chartqa.yaml")
    for argv in (["--overwrite"], ["--overwrite_output_dir"], ["--overwrite", "true"], ["--overwrite=true"]):
        script_args, _, _, resolved = parse_recipe(["--config", recipe, *argv], SFTConfig)
        # an action on this launch's folder, not a setting of the run: a reused recipe.yaml must not carry it
        assert script_args.overwrite_output_dir is True and "overwrite_output_dir" not in resolved, argv
    script_args, _, _, resolved = parse_recipe(["--config", recipe], SFTConfig)
    assert script_args.overwrite_output_dir is False and "overwrite_output_dir" not in resolved
