"""`vlm-tune plan`: token counts through TRL's collator, parameter counts that match the trained model,
an activation estimate checked against a measured forward pass, the truncation warning, offline planning."""

from __future__ import annotations

import json

import pytest

from vlm_tune.plan import command as plan
from vlm_tune.core.errors import UserError

from helpers import REPO, TINY_RECIPE


def tiny_argv(model_dir, data_dir, *extra: str) -> list[str]:
    return ["--config", str(TINY_RECIPE), "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir),
            "--build_tiny_model", "false", "--synthetic_dataset", "false", "--samples", "12", *extra]


def test_tiny_plan_matches_the_model_and_a_measured_forward(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    # gradient checkpointing on, as the real recipes train (it also records the frozen vision tower)
    result = plan.plan(tiny_argv(tiny_model_dir, tiny_chartqa_dir, "--measure", "--gradient_checkpointing", "true",
                                 "--json", str(tmp_path / "plan.json")))
    assert json.loads((tmp_path / "plan.json").read_text()) == json.loads(json.dumps(result))

    # tokens: the recipe trains one 64-px tile (16 tokens); splitting would give 2×2 + 1 tiles of the 160-px charts
    tokens = result["tokens"]
    assert tokens["samples"] == 12 and not tokens["do_image_splitting"]
    assert tokens["image_tokens"] == {"min": 16, "mean": 16.0, "max": 16}
    assert tokens["image_tokens_splitting_on"]["max"] == 5 * 16 and tokens["image_tokens_splitting_off"]["max"] == 16
    seq = tokens["sequence_length"]
    assert seq["max"] == max(tokens["sequence_lengths"]) and seq["p50"] <= seq["p95"] <= seq["p99"] <= seq["max"]
    assert seq["max"] <= tokens["image_tokens"]["max"] + tokens["text_tokens"]["max"]
    assert result["warnings"] == []  # max_length: null

    # parameters and 4-bit weights: the meta-device count equals the loaded, LoRA-wrapped model's
    counts, measured = result["parameters"], result["measured"]
    assert counts["trainable"] == measured["trainable_params"] > 0
    assert counts["quantized_linear_weights"] == measured["quantized_linear_weights"] > 0
    assert counts["total_base"] == sum(counts[g] for g in ("vision", "connector", "text", "lm_head"))

    # memory: positive parts that add up; activations within ±25 % of what autograd really kept
    memory = result["memory_mb"]
    parts = ["weights", "trainable_state", "ddp_buckets", "activations_stored", "working_set"]
    assert all(memory[k] > 0 for k in parts if k != "ddp_buckets") and memory["ddp_buckets"] == 0
    assert memory["tensors_total"] == pytest.approx(sum(memory[k] for k in parts), abs=0.3)
    assert memory["total"] == pytest.approx(memory["tensors_total"] + memory["runtime_overhead"], abs=0.2)
    assert 0.8 <= memory["activations_stored"] / measured["activations_stored"] <= 1.25, (memory, measured)
    assert memory["target"] == "cpu" and memory["compute_dtype"] == "float32" and memory["gradient_checkpointing"]


def test_truncation_warning_and_multi_process_arithmetic(tiny_model_dir, tiny_chartqa_dir, capsys):
    argv = tiny_argv(tiny_model_dir, tiny_chartqa_dir, "--max_length", "20", "--num_processes", "2",
                     "--gradient_accumulation_steps", "3")
    assert plan.main(argv) == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("WARNING: max_length 20 would truncate 12 of 12")]
    assert warning and "image tokens" in warning[0] and "max_length: null" in warning[0]
    assert "effective batch = 48 (8 per device × 3 accumulation × 2 process(es))" in out
    assert "DDP gradient buckets" in out


def test_real_recipe_plans_offline_from_the_built_in_table():
    result = plan.plan(["--config", str(REPO / "recipes/smolvlm-256m/sft_chartqa.yaml"), "--samples", "2"])
    assert "built-in" in result["model_source"] and "stand-in" in result["processor_source"]
    assert result["data_source"].startswith("synthetic chartqa")
    tokens, counts, memory = result["tokens"], result["parameters"], result["memory_mb"]
    # 512-px tiles, 64 tokens each; longest edge 1536 → 3×3 tiles + 1 global for a square chart
    assert tokens["tokens_per_tile"] == 64 and tokens["image_tokens"]["max"] == 640
    assert tokens["image_tokens_splitting_off"]["max"] == 64
    assert 250e6 < counts["total_base"] < 262e6  # "256M"
    assert counts["lora_layers"] == 30 * 7 and counts["trainable"] < 0.03 * counts["total_base"]
    assert memory["target"] == "gpu" and memory["compute_dtype"] == "bfloat16" and memory["gradient_checkpointing"]
    assert 100 < memory["weights"] < 300  # NF4 + double quant: well under the 490 MiB of bf16 weights


def test_bad_model_config_is_one_line(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="no model_type") as excinfo:
        plan.plan(["--config", str(REPO / "recipes/smolvlm-256m/sft_chartqa.yaml"), "--model_config", str(bad)])
    assert "\n" not in str(excinfo.value)


def test_bad_plan_option_is_one_line():
    with pytest.raises(UserError, match="vlm-tune plan: argument --target") as excinfo:
        plan.plan(["--config", str(REPO / "recipes/smolvlm-256m/sft_chartqa.yaml"), "--target", "tpu"])
    assert "\n" not in str(excinfo.value)


# --- SmolVLM2 --------------------------------------------------------------------------------
def test_tiny_smolvlm2_plans_like_the_v1_tiny_model(tiny_model_dir, tiny_smolvlm2_dir, tiny_chartqa_dir):
    """Same sizes, processor geometry and chat text: the same plan, with SmolVLM2's own processor loaded."""
    v1 = plan.plan(tiny_argv(tiny_model_dir, tiny_chartqa_dir))
    v2 = plan.plan(tiny_argv(tiny_smolvlm2_dir, tiny_chartqa_dir, "--measure"))
    assert v2["processor_source"] == f"{tiny_smolvlm2_dir} processor"
    assert v2["tokens"] == v1["tokens"] and v2["parameters"] == v1["parameters"]
    assert v2["parameters"]["trainable"] == v2["measured"]["trainable_params"] > 0


@pytest.mark.parametrize("size, per_tile, image_tokens, params", [
    ("256m", 64, 640, (250e6, 262e6)),   # 512-px tiles; longest edge 1536 → 3×3 + 1 global
    ("500m", 64, 640, (500e6, 515e6)),
    ("2.2b", 81, 810, (2.2e9, 2.3e9)),   # 384-px tiles; longest edge 1152 → 3×3 + 1 global
])
def test_smolvlm2_recipes_plan_offline_from_the_built_in_table(size, per_tile, image_tokens, params):
    result = plan.plan(["--config", str(REPO / f"recipes/smolvlm2-{size}/sft_chartqa.yaml"), "--samples", "1"])
    assert "built-in" in result["model_source"] and "stand-in" in result["processor_source"]
    tokens, counts = result["tokens"], result["parameters"]
    assert tokens["tokens_per_tile"] == per_tile and tokens["image_tokens"]["max"] == image_tokens
    assert params[0] < counts["total_base"] < params[1]
    assert result["memory_mb"]["compute_dtype"] == "bfloat16"


def test_smolvlm2_table_builds_smolvlm_configs():
    from transformers import SmolVLMConfig

    from vlm_tune.plan.models import KNOWN_MODELS, known_config, stand_in_processor

    smolvlm2 = [name for name in KNOWN_MODELS if "SmolVLM2" in name]
    assert len(smolvlm2) == 3
    for name in smolvlm2:
        assert isinstance(known_config(name), SmolVLMConfig) and known_config(name).model_type == "smolvlm"
    assert type(stand_in_processor(known_config(smolvlm2[0]))).__name__ == "SmolVLMProcessor"
    assert type(known_config("HuggingFaceTB/SmolVLM-256M-Instruct")).__name__ == "Idefics3Config"


def test_missing_local_dataset_is_an_error_not_stand_in_data(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match=r"dataset not found: \./no-such-data") as excinfo:
        plan.plan(tiny_argv(tiny_model_dir, "./no-such-data"))
    assert "\n" not in str(excinfo.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_dict.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read dataset"):
        plan.plan(tiny_argv(tiny_model_dir, str(broken)))


def test_unreachable_hub_dataset_plans_on_stand_in_rows_with_a_warning(tiny_model_dir):
    result = plan.plan(tiny_argv(tiny_model_dir, "someone/not-cached-here", "--samples", "2"))
    assert result["data_source"].startswith("synthetic chartqa")
    assert any("someone/not-cached-here is not on this machine" in w for w in result["warnings"])


def test_bad_plan_numbers_and_paths_are_one_line(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    with pytest.raises(UserError, match="--num_processes must be at least 1, not 0"):
        plan.plan(tiny_argv(tiny_model_dir, tiny_chartqa_dir, "--num_processes", "0"))
    with pytest.raises(UserError, match="--json .* is a folder"):
        plan.plan(tiny_argv(tiny_model_dir, tiny_chartqa_dir, "--json", str(tmp_path)))
