"""Tiny QLoRA SFT end to end on CPU: what trains, what is saved, overfitting, resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import load_from_disk
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import ModelConfig

from vlm_tune.train import sft
from vlm_tune.core.generation import generate_answers
from vlm_tune.core.modeling import load_processor

from helpers import REPO, sft_argv


class ParamSnapshot(TrainerCallback):
    """Copies every parameter when training starts and ends (4-bit weights: their packed bytes)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.checkpointing = (args.gradient_checkpointing, args.gradient_checkpointing_kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_qlora_sft_trains_lora_only_and_saves_a_loadable_adapter(tiny_arch_dir, tiny_chartqa_dir, tmp_path):
    snapshot = ParamSnapshot()
    out = tmp_path / "run"
    # gradient checkpointing on (as in the real recipes): non-reentrant, through 4-bit layers + LoRA
    summary = sft.main(sft_argv(tiny_arch_dir, tiny_chartqa_dir, out, "--max_steps", "3", "--save_strategy", "no",
                                "--gradient_checkpointing", "true"),
                       callbacks=[snapshot])

    assert snapshot.checkpointing == (True, {"use_reentrant": False})
    # LoRA params changed, every base param (4-bit packed weights, embeddings, norms, vision) did not
    assert snapshot.trainable and all("lora_" in n for n in snapshot.trainable)
    assert not any("vision_model" in n for n in snapshot.trainable)
    changed = {n for n in snapshot.before if not torch.equal(snapshot.before[n], snapshot.after[n])}
    assert changed == {n for n in snapshot.trainable if "lora_B" in n or "lora_A" in n} & changed
    assert any("lora_B" in n for n in changed), "LoRA B starts at zero and must move"
    assert not (changed - snapshot.trainable), f"frozen params changed: {sorted(changed - snapshot.trainable)[:3]}"
    quantized = [n for n, p in snapshot.before.items() if p.dtype == torch.uint8]
    assert quantized, "the base model must be loaded in 4-bit"

    # run outputs
    for name in ["adapter_model.safetensors", "adapter_config.json", "processor_config.json", "tokenizer.json",
                 "recipe.yaml", "train_results.json", "trainer_state.json", "run_summary.json"]:
        assert (out / name).is_file(), name
    assert summary["steps"] == 3 and summary["effective_batch"] == 8 and summary["trainable_params"] > 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    assert "max_steps: 3" in (out / "recipe.yaml").read_text()

    # the adapter loads with plain peft and generates (SmolVLM2's AutoProcessor needs torchvision: our route)
    base = AutoModelForImageTextToText.from_pretrained(tiny_arch_dir)
    model = PeftModel.from_pretrained(base, out)
    smolvlm2 = json.loads((tiny_arch_dir / "config.json").read_text())["model_type"] == "smolvlm"
    processor = load_processor(ModelConfig(model_name_or_path=str(out))) if smolvlm2 else AutoProcessor.from_pretrained(out)
    row = load_from_disk(str(tiny_chartqa_dir))["test"][0]
    assert len(generate_answers(model, processor, [row["image"]], [row["query"]], max_new_tokens=4)) == 1


@pytest.mark.slow
def test_overfit_8_examples(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    out = tmp_path / "overfit"
    sft.main(sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_train_samples", "8", "--max_steps", "60",
                      "--learning_rate", "3e-3", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
                      "--save_strategy", "no"))
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses[-1] < 0.2 * losses[0], losses

    processor = AutoProcessor.from_pretrained(out)
    processor.image_processor.do_image_splitting = False  # as trained (recipe setting)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_model_dir), out)
    rows = load_from_disk(str(tiny_chartqa_dir))["train"].select(range(8))
    answers = generate_answers(model, processor, list(rows["image"]), list(rows["query"]), max_new_tokens=8)
    assert answers == [label[0] for label in rows["label"]]


KILL_AND_RESUME = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from vlm_tune.train import sft

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like an OOM kill or a pulled plug

    sft.main(sys.argv[1:], callbacks=[KillAfterCheckpoint()])
    """
)


def test_resume_after_kill_reaches_planned_steps(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    out = tmp_path / "resume"
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "6", "--save_strategy", "steps",
                    "--save_steps", "2")
    killed = subprocess.run([sys.executable, "-c", KILL_AND_RESUME, *argv], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "adapter_model.safetensors").exists()

    summary = sft.main(argv + ["--resume_from_checkpoint", "true"])
    assert summary["steps"] == 6
    state = json.loads((out / "trainer_state.json").read_text())
    logged_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged_steps == [1, 2, 3, 4, 5, 6]  # steps 1–2 from before the kill, 3–6 after resuming
    # the summary speaks for the whole run, not only the 4 steps of the resumed process
    assert summary["resumed_from_step"] == 2
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert summary["train_loss"] == pytest.approx(sum(losses) / 6)
    assert (out / "adapter_model.safetensors").is_file()


KILL_AFTER_LAST_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from vlm_tune.train import sft

    class KillAfterLastCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:  # the last checkpoint is on disk; eval, summary, report are not
                os.kill(os.getpid(), signal.SIGKILL)

    sft.main(sys.argv[1:], callbacks=[KillAfterLastCheckpoint()])
    """
)


class CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_resume_after_the_last_checkpoint_trains_nothing_and_finishes_the_run(tiny_model_dir, tiny_chartqa_dir,
                                                                               tmp_path):
    out = tmp_path / "killed-at-the-end"
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "4", "--save_strategy", "steps",
                    "--save_steps", "2", "--eval_after_train", "true", "--max_eval_samples", "4")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_LAST_CHECKPOINT, *argv], cwd=REPO, capture_output=True,
                            text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint-4").is_dir() and not (out / "run_summary.json").exists()

    for attempt in ("killed after its last checkpoint", "finished, resumed again"):
        counter = CountSteps()
        summary = sft.main(argv + ["--resume_from_checkpoint", "true"], callbacks=[counter])
        assert counter.steps == 0, attempt  # Trainer alone would take step 5 of 4
        assert summary["steps"] == 4 and summary["resumed_from_step"] == 4, attempt
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
        losses = [e["loss"] for e in state["log_history"] if "loss" in e]
        assert summary["train_loss"] == pytest.approx(sum(losses) / 4) and summary["train_loss"] == summary["train_loss"]
        for name in ("adapter_model.safetensors", "run_summary.json", "report.html", "report.md", "eval/table.md",
                     "recipe.yaml"):
            assert (out / name).is_file(), (attempt, name)
        assert json.loads((out / "run_summary.json").read_text())["steps"] == 4
    assert "eval_tuned_pct" in summary


def test_overwrite_replaces_the_run_and_keeps_other_files(tiny_model_dir, tiny_chartqa_dir, tiny_run_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run_dir, out)
    (out / "checkpoint-99").mkdir()  # an old run's leftovers must not mix with the new run
    (out / "eval-test").mkdir()
    (out / "notes.txt").write_text("my notes")
    argv = sft_argv(tiny_model_dir, tiny_chartqa_dir, out, "--max_steps", "1", "--save_strategy", "no",
                    "--eval_after_train", "false")
    summary = sft.main(argv + ["--overwrite"])
    assert summary["steps"] == 1
    assert not (out / "checkpoint-99").exists() and not (out / "eval-test").exists() and not (out / "eval").exists()
    assert (out / "notes.txt").read_text() == "my notes"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    recipe = (out / "recipe.yaml").read_text()
    assert "--overwrite" in recipe.splitlines()[1] and "overwrite_output_dir" not in recipe  # said, not carried on

    # a finished run without checkpoints (save_strategy: no), resumed: complete as it is, nothing trains
    counter = CountSteps()
    summary = sft.main(argv + ["--resume_from_checkpoint", "true"], callbacks=[counter])
    assert counter.steps == 0 and summary["steps"] == 1 and summary["resumed_from_step"] == 1
