"""Trackers and secrets: a W&B offline run in the run folder, TensorBoard events, validation samples
logged every evaluation, and no token or key in any file a run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_tune.train import sft

from vlm_tune.core import secrets
from vlm_tune.train import tracking
from vlm_tune.core.errors import UserError

from helpers import TINY_RECIPE, sft_argv

FAKE_WANDB_KEY = "fake-wandb-key-0123456789abcdef0123456789"
FAKE_HF_TOKEN = "hf_fakeTokenValue0123456789abcdef"
RECIPE_ENV_SECRET = "svc-secret-999888777666"


def test_wandb_offline_tensorboard_validation_samples_and_no_secret_anywhere(
    tiny_model_dir, tiny_chartqa_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables W&B; a key + offline must still never upload
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "placeholder")  # restored after the test; the recipe's env: sets it
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    recipe = tmp_path / "recipe-with-env.yaml"
    recipe.write_text(TINY_RECIPE.read_text() + f"\nenv:\n  MY_SERVICE_TOKEN: {RECIPE_ENV_SECRET}\n")
    out = tmp_path / "run"
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "1", "--save_strategy", "no",
                    "--report_to", "wandb,tensorboard", "--eval_strategy", "steps", "--eval_steps", "1",
                    "--num_validation_samples", "2", "--validation_max_new_tokens", "4", "--max_eval_samples", "4",
                    "--per_device_train_batch_size", "2", "--eval_after_train", "false",
                    # secrets typed into text flags: scrubbed before TrainingArguments (training_args.bin), TensorBoard
                    # and W&B (name, tags, config, and the command line it records) see them
                    "--run_name", f"tiny-wandb-check-{FAKE_HF_TOKEN}", "--run_tags", "smoke", "ci",
                    f"team-{FAKE_WANDB_KEY}")
    argv[argv.index(str(TINY_RECIPE))] = str(recipe)
    monkeypatch.setattr(sys, "argv", ["vlm-tune", "sft", *argv])

    sft.main(argv)

    # W&B: an offline run inside the run folder, finished, with run name, tags and the resolved recipe
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb folder"
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for expected in (b"tiny-wandb-check", b"smoke", b"num_validation_samples", b"validation/samples"):
        assert expected in record, expected
    assert tracking.wandb_run() is None, "the W&B run must be finished at the end of sft"
    # the validation tables (step 0 and step 1) as W&B tables, and a run `wandb sync` accepts for upload later
    tables = sorted(runs[0].glob("files/media/table/validation/samples_*.table.json"))
    assert len(tables) == 2, tables
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["step", "image", "prompt", "reference", "prediction", "correct"]
    assert len(table["data"]) == 2
    synced = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(runs[0])],
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0 and "Would sync 1 run" in synced.stdout + synced.stderr, synced.stderr[-1000:]
    # TensorBoard: event files in the run folder, not ./runs/DATE_HOST
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    # validation samples at step 0 and every eval (step 1); the end is step 1 again: not generated twice
    files = sorted(p.name for p in (out / "validation").glob("step-*.jsonl"))
    assert files == ["step-000000.jsonl", "step-000001.jsonl"]
    rows = [json.loads(line) for line in (out / "validation" / "step-000001.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"image", "prompt", "reference", "prediction", "correct"} <= set(rows[0])
    assert all((out / "validation" / row["image"]).is_file() for row in rows)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_samples_relaxed_accuracy" in e] == [0, 1]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()  # written at the end of sft

    assert (out / "training_args.bin").is_file()
    assert b"tiny-wandb-check-***" in record and b"team-***" in record
    # secrets: not in any file under the run folder (binary W&B records and TensorBoard events included)
    assert f"MY_SERVICE_TOKEN: '{secrets.REDACTED}'" in (out / "recipe.yaml").read_text()
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in (FAKE_WANDB_KEY, FAKE_HF_TOKEN, RECIPE_ENV_SECRET):
            assert secret.encode() not in data, f"{secret[:8]}… written to {path.relative_to(out)}"


def test_scrub_blanks_secret_keys_and_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HF_TOKEN)
    monkeypatch.setenv("SHORT_KEY", "1")  # too short to be a secret: must not mangle text
    recipe = {"env": {"WANDB_API_KEY": "abc", "TOKENIZERS_PARALLELISM": "false"}, "hub_token": "xyz",
              "pad_token": "<pad>", "dataset_name": f"data/{FAKE_HF_TOKEN}/x", "lora_r": 1}
    assert secrets.scrub(recipe) == {
        "env": {"WANDB_API_KEY": "***", "TOKENIZERS_PARALLELISM": "false"}, "hub_token": "***",
        "pad_token": "<pad>", "dataset_name": "data/***/x", "lora_r": 1,
    }
    assert secrets.scrub_argv(["--hub_token", "abc", "--x_api_key=def", "--lr", "1", FAKE_HF_TOKEN]) == [
        "--hub_token", "***", "--x_api_key=***", "--lr", "1", "***"]


def test_wandb_is_offline_unless_a_key_or_mode_is_given(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    assert tracking.wandb_mode() is None  # the user's key: wandb's own default (online)
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() is None  # wandb reads WANDB_MODE itself


def test_token_as_recipe_key_is_refused():
    class Args:
        report_to, run_name, output_dir = "none", None, "runs/x"

    with pytest.raises(UserError, match="set it in the environment"):
        tracking.prepare(Args(), {"hub_token": "abc"})
    args = Args()
    args.report_to = "wandb,tensorboard"
    resolved = {"report_to": "wandb,tensorboard"}
    tracking.prepare(args, resolved)
    assert args.report_to == resolved["report_to"] == ["wandb", "tensorboard"] and args.run_name == "x"
