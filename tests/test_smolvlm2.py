"""SmolVLM2 end to end on the tiny `--arch smolvlm2` model, on this CPU machine (no torchvision): SFT saves
an adapter and a SmolVLM2 processor, the adapter loads and generates, `vlm-tune eval` and `vlm-tune
caption` run on it, it exports to a plain folder, DPO trains a few steps. Each job loads its processor through
`core.modeling.load_processor` — the route these tests exist for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO, TINY_RECIPE, sft_argv


@pytest.fixture(scope="module")
def smolvlm2_run_dir(tmp_path_factory, tiny_smolvlm2_dir, tiny_chartqa_dir) -> Path:
    """A 3-step QLoRA SFT run of the tiny SmolVLM2."""
    from vlm_tune.train import sft

    out = tmp_path_factory.mktemp("runs") / "tiny-smolvlm2-run"
    sft.main(sft_argv(tiny_smolvlm2_dir, tiny_chartqa_dir, out, "--max_steps", "3", "--save_strategy", "no"))
    return out


def test_sft_saves_an_adapter_and_the_smolvlm2_processor(smolvlm2_run_dir, tiny_smolvlm2_dir):
    summary = json.loads((smolvlm2_run_dir / "run_summary.json").read_text())
    assert summary["steps"] == 3 and summary["trainable_params"] > 0
    assert (smolvlm2_run_dir / "adapter_model.safetensors").is_file()
    saved = json.loads((smolvlm2_run_dir / "processor_config.json").read_text())
    original = json.loads((tiny_smolvlm2_dir / "processor_config.json").read_text())
    # the run folder's processor is the model's, video settings included (AutoProcessor loads it on a GPU machine)
    assert saved["processor_class"] == "SmolVLMProcessor" and saved["video_processor"] == original["video_processor"]
    adapter = json.loads((smolvlm2_run_dir / "adapter_config.json").read_text())
    assert "model\\.text_model" in adapter["target_modules"]  # the lm+connector scope regex, as on SmolVLM v1


def test_adapter_loads_and_generates(smolvlm2_run_dir, tiny_smolvlm2_dir):
    from trl import ModelConfig

    from vlm_tune.core.generation import generate_answers
    from vlm_tune.core.modeling import load_for_inference

    model_args = ModelConfig(model_name_or_path=str(tiny_smolvlm2_dir), load_in_4bit=True, use_bnb_nested_quant=True)
    model, processor = load_for_inference(model_args, do_image_splitting=False, adapter=str(smolvlm2_run_dir))
    assert type(model.get_base_model()).__name__ == "SmolVLMForConditionalGeneration"
    assert type(processor).__name__ == "SmolVLMProcessor"
    answers = generate_answers(model, processor, [Image.new("RGB", (64, 64), "red")] * 2,
                               ["Which colour is the line?", "How many bars are there?"], batch_size=2,
                               max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)


def test_eval_command_on_the_adapter(smolvlm2_run_dir, tiny_smolvlm2_dir, tiny_chartqa_dir, tmp_path, capsys):
    from vlm_tune.cli import main

    argv = ["eval", "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_smolvlm2_dir),
            "--dataset_name", str(tiny_chartqa_dir), "--adapter", str(smolvlm2_run_dir), "--limit", "4",
            "--output_dir", str(tmp_path / "eval")]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["adapter"] == str(smolvlm2_run_dir)
    assert "| tuned |" in capsys.readouterr().out


def test_caption_command_with_the_adapter(smolvlm2_run_dir, tmp_path):
    from vlm_tune.caption import captioner as caption

    root = tmp_path / "images"
    root.mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (48, 32), colour).save(root / name)
    code = caption.main([str(root), "--adapter", str(smolvlm2_run_dir), "--format", "kohya", "--batch_size", "2",
                         "--trigger", "sks", "--max_new_tokens", "4"])
    assert code == 0
    counts = json.loads((root / "caption_report.json").read_text())["counts"]
    assert counts["written"] + counts["failed"] == 2
    for sidecar in root.glob("*.txt"):
        assert sidecar.read_text(encoding="utf-8").startswith("sks")


def test_dpo_few_steps_from_sample_ratings(tiny_smolvlm2_dir, tmp_path):
    from vlm_tune.train import dpo

    pairs = tmp_path / "pairs"
    summary = dpo.main(["--config", str(REPO / "recipes/tiny/dpo_ratings.yaml"),
                        "--model_name_or_path", str(tiny_smolvlm2_dir), "--build_tiny_model", "false",
                        "--ratings_file", str(tmp_path / "ratings" / "ratings.csv"), "--sample_charts", "12",
                        "--dataset_name", str(pairs), "--output_dir", str(tmp_path / "dpo"), "--max_steps", "2",
                        "--per_device_train_batch_size", "4", "--disable_tqdm", "true"])
    assert summary["steps"] == 2 and summary["pref_accuracy_before_pct"] == 50.0
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    saved = json.loads((tmp_path / "dpo" / "processor_config.json").read_text())
    assert saved["processor_class"] == "SmolVLMProcessor"


LOAD_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None  # any import of peft fails: the folder must not need it
from transformers import AutoModelForImageTextToText
print(json.dumps({"class": type(AutoModelForImageTextToText.from_pretrained(sys.argv[1])).__name__}))
"""


def test_export_merges_into_a_plain_smolvlm2_folder(smolvlm2_run_dir, tmp_path):
    import subprocess
    import sys

    from vlm_tune.export import command as export

    out = tmp_path / "merged"
    report = export.main(["--adapter", str(smolvlm2_run_dir), "--output", str(out), "--rows", "4"])
    assert report["passed"] is True and report["answers"]["agreement"] == 1.0
    assert report["logits"]["max_abs_diff"] <= 1e-3 and report["merged_into"] == "trained (4-bit)"
    assert json.loads((out / "config.json").read_text())["model_type"] == "smolvlm"
    saved = json.loads((out / "processor_config.json").read_text())
    assert saved["processor_class"] == "SmolVLMProcessor" and "video_processor" in saved  # AutoProcessor with torchvision
    assert not list(out.glob("adapter_*"))
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PEFT, str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["class"] == "SmolVLMForConditionalGeneration"
