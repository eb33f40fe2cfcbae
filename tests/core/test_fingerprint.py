"""The base an adapter was trained on: base_fingerprint.json written at save time, compared by eval /
caption / export (and dpo's sft_adapter) with the base they load. Other weights are refused unless
--force_base, another architecture is one line, a run from before the fingerprint only warns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlm_tune import cli
from vlm_tune.core import fingerprint as fp
from vlm_tune.core.errors import UserError

from helpers import TINY_RECIPE, assert_one_line_error
from hostile_helpers import other_architecture


@pytest.fixture(scope="module")
def seed1_model(tmp_path_factory) -> Path:
    """`vlm-tune make-tiny-model --seed 1`: the tiny architecture with other weights."""
    out = tmp_path_factory.mktemp("seed1") / "tiny-seed1"
    assert cli.main(["make-tiny-model", "--output", str(out), "--seed", "1"]) == 0
    return out


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test sees the warnings and checks of a fresh process."""
    monkeypatch.setattr(fp, "_warned", set())
    monkeypatch.setattr(fp, "_passed", set())


def eval_argv(model: Path, data: Path, adapter: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--config", str(TINY_RECIPE), "--model_name_or_path", str(model), "--dataset_name", str(data),
            "--build_tiny_model", "false", "--synthetic_dataset", "false", "--limit", "2", "--max_new_tokens", "2",
            "--adapter", str(adapter), "--output_dir", str(out), *extra]


def old_run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    """A run made before vlm-tune recorded its base."""
    run = Path(shutil.copytree(tiny_run_dir, tmp_path / "old-run"))
    (run / fp.FINGERPRINT).unlink()
    return run


# --- the fingerprint -------------------------------------------------------------------------
def test_fingerprint_tells_weights_and_architectures_apart(tiny_model_dir, tiny_smolvlm2_dir, seed1_model, tmp_path):
    base = fp.fingerprint(str(tiny_model_dir))
    copy = fp.fingerprint(str(shutil.copytree(tiny_model_dir, tmp_path / "moved")))
    assert copy["weights"] == base["weights"] and copy["sizes"] == base["sizes"]  # content, not the path
    other = fp.fingerprint(str(seed1_model))
    assert (other["model_type"], other["sizes"]) == (base["model_type"], base["sizes"])
    assert other["weights"]["sha256"] != base["weights"]["sha256"]
    assert fp.fingerprint(str(tiny_smolvlm2_dir))["model_type"] == "smolvlm"
    assert base["weights"]["tensors"] > 50 and base["weights"]["dtype"] == "F32"
    assert fp.fingerprint(str(tmp_path / "nowhere")) is None and fp.fingerprint("owner/not-cached") is None


def test_a_run_records_its_base_at_save_time(tiny_run_dir, tiny_model_dir):
    from vlm_tune.train.run_folder import RUN_FILES

    recorded = json.loads((tiny_run_dir / fp.FINGERPRINT).read_text())
    assert recorded == json.loads(json.dumps(fp.fingerprint(str(tiny_model_dir), "main")))  # ModelConfig's revision
    assert recorded["model"] == str(tiny_model_dir) and recorded["model_type"] == "idefics3"
    assert fp.FINGERPRINT in RUN_FILES  # --overwrite clears it with the run


# --- the check -------------------------------------------------------------------------------
def test_matching_base_passes_and_a_checkpoint_uses_its_runs_record(tiny_run_dir, tiny_model_dir, tmp_path, capsys):
    assert fp.check_base(tiny_run_dir, str(tiny_model_dir)) is True
    run = Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))
    (run / "checkpoint-3").mkdir()
    assert fp.recorded_fingerprint(run / "checkpoint-3")[0] == run / fp.FINGERPRINT
    assert fp.check_base(run / "checkpoint-3", str(tiny_model_dir)) is True
    assert capsys.readouterr().err == ""


def test_other_weights_are_refused_and_force_base_warns(tiny_run_dir, seed1_model, tiny_chartqa_dir, tmp_path, capsys):
    assert cli.main(eval_argv(seed1_model, tiny_chartqa_dir, tiny_run_dir, tmp_path / "e")) == 2
    assert_one_line_error(2, capsys.readouterr().err, "trained on other weights than --model_name_or_path",
                          str(seed1_model), "--force_base")
    assert not (tmp_path / "e").exists()

    assert cli.main(eval_argv(seed1_model, tiny_chartqa_dir, tiny_run_dir, tmp_path / "e", "--force_base")) == 0
    err = capsys.readouterr().err
    assert "WARNING: --force_base" in err and str(seed1_model) in err
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_another_architecture_is_one_line_with_or_without_a_record(tiny_run_dir, tiny_model_dir, tiny_chartqa_dir,
                                                                   tmp_path, capsys):
    wide = other_architecture(tiny_model_dir, tmp_path / "wide")
    assert cli.main(eval_argv(wide, tiny_chartqa_dir, tiny_run_dir, tmp_path / "e", "--force_base")) == 2
    assert_one_line_error(2, capsys.readouterr().err, "another architecture",
                          "text_config.intermediate_size 384 (trained) vs 256")

    # a run from before the fingerprint: peft's page of size mismatches becomes one line at the load
    assert cli.main(eval_argv(wide, tiny_chartqa_dir, old_run(tiny_run_dir, tmp_path), tmp_path / "e")) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, "does not fit the base", str(wide), "weight(s) of another shape", "384, 32")
    assert "size mismatch" not in err and "Error(s) in loading state_dict" not in err  # not peft's 12-line wall
    assert f"{tmp_path / 'old-run'} has no {fp.FINGERPRINT}" in err


def test_a_run_without_a_record_warns_once_and_loads(tiny_run_dir, tiny_model_dir, tmp_path, capsys):
    run = old_run(tiny_run_dir, tmp_path)
    assert fp.check_base(run, str(tiny_model_dir)) is True
    assert fp.check_base(run, str(tiny_model_dir)) is True
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"{run} has no {fp.FINGERPRINT}" in err


def test_a_quantized_checkpoint_of_the_base_needs_force_base(tiny_run_dir):
    recorded = json.loads((tiny_run_dir / fp.FINGERPRINT).read_text())
    quantized = dict(recorded, quantized="bitsandbytes", weights={"sha256": "other"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fp, "fingerprint", lambda name, revision=None: quantized)
        with pytest.raises(UserError, match="bitsandbytes-quantized checkpoint.*pass --force_base"):
            fp.check_base(tiny_run_dir, "q4", base_flag="--base")
        assert fp.check_base(tiny_run_dir, "q4", force=True, base_flag="--base") is True


def test_a_broken_record_is_one_line(tiny_run_dir, tiny_model_dir, tmp_path):
    run = Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))
    (run / fp.FINGERPRINT).write_text("{")
    with pytest.raises(UserError, match="base_fingerprint.json: not readable.*delete it"):
        fp.check_base(run, str(tiny_model_dir))


# --- loading a checkpoint that is already quantized ------------------------------------------
def test_load_model_reads_a_bitsandbytes_checkpoint(tiny_model_dir, tmp_path):
    """No quantization asked: load_model leaves quantization_config out, so the checkpoint's own applies
    (an explicit None made transformers 5.23 re-initialise every packed weight and fail)."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig
    from trl import ModelConfig

    from vlm_tune.core.modeling import load_model

    quantized = tmp_path / "tiny-bnb-4bit"
    AutoModelForImageTextToText.from_pretrained(
        tiny_model_dir, dtype=torch.float32, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)).save_pretrained(quantized)
    model = load_model(ModelConfig(model_name_or_path=str(quantized)))
    assert type(model.hf_quantizer).__name__ == "Bnb4BitHfQuantizer"
    assert fp.fingerprint(str(quantized))["quantized"] == "bitsandbytes"
