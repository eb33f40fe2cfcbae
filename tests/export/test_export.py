"""`vlm-tune export`: the tiny 3-step run merged into a plain folder that loads without peft and answers
like the adapter; the report; refusals; overwrite; a failure (or a failed check) leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, sft_argv
from vlm_tune import cli
from vlm_tune.core.errors import UserError
from vlm_tune.export import command as export
from vlm_tune.export import verify

ROWS = 8


def run_export(*argv) -> dict:
    return export.main([str(a) for a in argv])


def leftovers(parent: Path, name: str) -> list[str]:
    """Staging folders an export left beside its output."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-")]


@pytest.fixture(scope="module")
def exported(tiny_run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    report = run_export("--adapter", tiny_run_dir, "--output", out, "--rows", ROWS)
    return out, report


# --- the folder ----------------------------------------------------------------------------------
def test_export_writes_a_plain_verified_folder(exported, tiny_model_dir):
    out, report = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "processor_config.json",
            "tokenizer.json", "chat_template.jinja", "README.md", "export_report.json"} <= names
    assert not [n for n in names if n.startswith("adapter_") or n.endswith((".bin", ".pt", ".pth"))]
    assert leftovers(out.parent, out.name) == []
    assert json.loads((out / "config.json").read_text())["use_cache"] is True

    saved = json.loads((out / "export_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["passed"] is True and saved["failures"] == []
    assert saved["merged_into"] == "trained (4-bit)" and saved["dtype"] == "float32"  # the tiny base is fp32
    assert saved["base"] == str(tiny_model_dir)
    assert saved["answers"]["rows"] == ROWS and saved["answers"]["agreement"] == 1.0
    assert saved["answers"]["metric"] == "relaxed_accuracy"
    assert saved["answers"]["adapter"] == saved["answers"]["merged"]
    assert saved["logits"]["max_abs_diff"] <= 1e-3 and saved["logits"]["top1_agreement"] == 1.0
    assert saved["logits"]["rows"] == verify.LOGIT_ROWS and saved["logits"]["positions"] > 0
    assert saved["tolerance"] == {"min_answer_agreement": 0.95, "max_abs_logit_diff": 0.01}

    card = (out / "README.md").read_text()
    for text in ("library_name: transformers", str(tiny_model_dir), "quantized as in training", "## Export check",
                 "relaxed accuracy", "## Training data", "## Evaluation (from the run)", "from_pretrained(",
                 "convert_hf_to_gguf.py"):
        assert text in card, text


ANSWER_WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None  # any import of peft fails: the folder must not need it
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_tune.core.generation import generate_answers
from vlm_tune.data.rows import get_split, load_splits
out, data, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForImageTextToText.from_pretrained(out)
processor = AutoProcessor.from_pretrained(out)
split = get_split(load_splits(data), "test", data, rows)
print(json.dumps({"class": type(model).__name__,
                  "answers": generate_answers(model, processor, list(split["image"]), list(split["query"]),
                                              show_progress=False)}))
"""


def test_merged_folder_loads_without_peft_and_answers_like_the_adapter(exported, tiny_model_dir, tiny_chartqa_dir,
                                                                       tiny_run_dir, tmp_path):
    from trl import SFTConfig

    from vlm_tune.core.config import parse_recipe
    from vlm_tune.core.generation import generate_answers
    from vlm_tune.core.modeling import load_for_inference
    from vlm_tune.data.rows import get_split, load_splits

    out, _ = exported
    done = subprocess.run([sys.executable, "-c", ANSWER_WITHOUT_PEFT, str(out), str(tiny_chartqa_dir), str(ROWS)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain["class"] == "Idefics3ForConditionalGeneration"

    # the adapter as `vlm-tune eval --adapter` runs it: the recipe's 4-bit base + the LoRA adapter
    script_args, _, model_args, _ = parse_recipe(sft_argv(tiny_model_dir, tiny_chartqa_dir, tmp_path), SFTConfig)
    model, processor = load_for_inference(model_args, False, script_args.image_longest_edge,
                                          script_args.do_image_splitting, str(tiny_run_dir))
    split = get_split(load_splits(str(tiny_chartqa_dir)), "test", str(tiny_chartqa_dir), ROWS)
    adapter_answers = generate_answers(model, processor, list(split["image"]), list(split["query"]), show_progress=False)
    assert plain["answers"] == adapter_answers


# --- refusals ------------------------------------------------------------------------------------
def test_refuses_a_nonempty_output_and_the_run_folder(tiny_run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass --overwrite"):
        run_export("--adapter", tiny_run_dir, "--output", out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="would replace the run folder"):
        run_export("--adapter", tiny_run_dir, "--output", tiny_run_dir, "--overwrite")
    with pytest.raises(UserError, match="would replace the run folder"):
        run_export("--adapter", tiny_run_dir, "--output", tiny_run_dir.parent, "--overwrite")


@pytest.mark.parametrize("argv, expected", [
    (["--dtype", "float16"], "--dtype: invalid choice: 'float16'"),
    (["--rows", "0"], "--rows: must be >= 1, got 0"),
    (["--merge_into", "nf4"], "--merge_into/--merge-into: invalid choice: 'nf4'"),
])
def test_bad_flags_are_one_line(tiny_run_dir, tmp_path, capsys, argv, expected):
    code = cli.main(["export", "--adapter", str(tiny_run_dir), "--output", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and expected in err
    assert not (tmp_path / "x").exists()


def test_missing_adapter_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert cli.main(["export", "--adapter", str(tmp_path / "run"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no LoRA adapter there (adapter_config.json, adapter_model.safetensors missing)" in err


# --- overwrite and failures ----------------------------------------------------------------------
def test_overwrite_replaces_the_folder(tiny_run_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    report = run_export("--adapter", tiny_run_dir, "--output", out, "--overwrite", "--rows", 4)
    assert report["passed"] and not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path, "merged") == []


def test_a_failure_mid_export_leaves_nothing(tiny_run_dir, tmp_path, monkeypatch):
    """Weights already saved in the staging folder, then a crash: DIR keeps its old content, no staging left."""
    def crash(*args, **kwargs):
        raise RuntimeError("injected failure after the weights were saved")

    monkeypatch.setattr(export, "verify", crash)
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_text("the previous export")
    for out in (fresh, old):
        with pytest.raises(RuntimeError, match="injected"):
            run_export("--adapter", tiny_run_dir, "--output", out, "--overwrite", "--rows", 2)
    assert not fresh.exists()
    assert [p.name for p in old.iterdir()] == ["model.safetensors"]
    assert (old / "model.safetensors").read_text() == "the previous export"
    assert leftovers(tmp_path, "fresh") == leftovers(tmp_path, "old") == []


def test_a_failed_check_exits_nonzero_and_writes_nothing(tiny_run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(verify.TOLERANCE, "max_abs_logit_diff", {"float32": -1.0, "bfloat16": -1.0})
    out = tmp_path / "merged"
    code = cli.main(["export", "--adapter", str(tiny_run_dir), "--output", str(out), "--rows", "2"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1  # (stderr also carries the loaders' progress bars)
    assert errors[0].startswith("error: export check failed: max |Δlogit|") and "nothing was written" in errors[0]
    assert not out.exists() and leftovers(tmp_path, "merged") == []


# --- other bases -----------------------------------------------------------------------------------
def test_a_4bit_only_base_is_dequantized_then_merged(tiny_run_dir, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    quantized = tmp_path / "tiny-bnb-4bit"
    AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, dtype=torch.float32, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)).save_pretrained(quantized)
    out = tmp_path / "merged"
    # its weights cannot be compared with the full-precision base the run recorded: the user says it is that one
    with pytest.raises(UserError, match="bitsandbytes-quantized checkpoint.*--force_base"):
        run_export("--adapter", tiny_run_dir, "--output", out, "--base", quantized, "--rows", 4)
    report = run_export("--adapter", tiny_run_dir, "--output", out, "--base", quantized, "--rows", 4, "--force_base")
    assert report["merged_into"] == "4-bit checkpoint" and report["passed"]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert "dequantized 4-bit base" in (out / "README.md").read_text()


def test_merge_into_the_original_base_is_held_to_the_answers(tiny_run_dir, tmp_path):
    """The 3-step adapter was trained against the NF4 base: on the original fp32 base it answers
    differently (the garbage of a barely trained tiny model diverges at once), and the check says so."""
    from vlm_tune.export.source import read_run

    source = read_run(str(tiny_run_dir), merge_into="original")
    assert source.merge_into == "original"
    assert verify.tolerance_for(source, "float32")["max_abs_logit_diff"] is None  # not the weights trained on
    with pytest.raises(export.ExportCheckFailed, match=r"greedy answers agree on .* \(try --merge_into trained\)"):
        run_export("--adapter", tiny_run_dir, "--output", tmp_path / "merged", "--merge_into", "original", "--rows", 4)
    assert not (tmp_path / "merged").exists()


# --- what the answers are scored with ---------------------------------------------------------------
def test_captioner_answers_are_scored_by_attribute_recall():
    from data_builders.scenes import build_scenes

    split = build_scenes(0, 0, 2, seed=0, image_size=64)["test"]
    labels = [label[0] for label in split["label"]]
    assert verify.answer_score(split, labels, captioner=True) == 1.0
    assert verify.answer_score(split, [""] * len(labels), captioner=True) == 0.0


def test_dpo_pairs_become_questions_with_the_chosen_answer():
    import datasets
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    pairs = datasets.Dataset.from_dict({
        "images": [[image]],
        "prompt": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which is highest?"}]],
        "chosen": [[{"role": "assistant", "content": "Apple"}]],
        "rejected": [[{"role": "assistant", "content": "Pear"}]],
    })
    rows = verify.pairs_as_questions(pairs)
    assert rows["query"] == ["Which is highest?"] and rows["label"] == [["Apple"]] and rows["type"] == ["pair"]
    assert verify.answer_score(rows, ["apple"], captioner=False) == 1.0
