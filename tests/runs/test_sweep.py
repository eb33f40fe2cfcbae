"""`vlm-tune sweep`: a grid of 2 points → 2 run folders, sweep.json, a comparison of exactly the
swept key; a second launch skips finished runs; the subprocess launcher logs without secrets."""

from __future__ import annotations

import json
import sys

import pytest

from vlm_tune import cli

from vlm_tune.runs import sweep
from vlm_tune.core.errors import UserError

from helpers import TINY_RECIPE


def common_overrides(model_dir, data_dir) -> list[str]:
    """The tiny recipe on the session fixtures, 2 steps, 2 short validation samples, no held-out eval."""
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--build_tiny_model", "false",
            "--synthetic_dataset", "false", "--logging_steps", "1", "--disable_tqdm", "true", "--max_steps", "2",
            "--save_strategy", "no", "--eval_strategy", "no", "--eval_after_train", "false",
            "--num_validation_samples", "2", "--validation_max_new_tokens", "4", "--per_device_train_batch_size", "2"]


def test_two_point_sweep_runs_compares_and_resumes(tiny_model_dir, tiny_chartqa_dir, tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    argv = ["sweep", "--config", str(TINY_RECIPE), "--grid", "learning_rate=1e-3,5e-4", "--sweep_dir", str(sweep_dir),
            "--in_process", *common_overrides(tiny_model_dir, tiny_chartqa_dir)]
    assert cli.main(argv) == 0

    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert state["grid"] == {"learning_rate": ["1e-3", "5e-4"]}
    assert [(r["name"], r["status"], r["seed"]) for r in state["runs"]] == [("lr1e-3", "finished", 42),
                                                                             ("lr5e-4", "finished", 42)]
    for name in ("lr1e-3", "lr5e-4"):
        run = sweep_dir / name
        assert (run / "run_summary.json").is_file() and (run / "adapter_model.safetensors").is_file()
        assert (run / "report.html").is_file()
        assert "run_name: sweep-" + name in (run / "recipe.yaml").read_text()
    compared = json.loads((sweep_dir / "compare" / "compare.json").read_text())
    assert compared["differing_keys"] == ["learning_rate"]
    assert (sweep_dir / "compare" / "compare.html").is_file() and (sweep_dir / "compare" / "loss.png").is_file()

    # relaunched: both runs are finished, nothing trains
    def must_not_train(job, argv):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "launch_in_process", must_not_train)
    assert cli.main(argv) == 0
    assert [r["status"] for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]] == ["finished"] * 2


def test_grid_names_seeds_and_dry_run(tmp_path, capsys):
    grid = sweep.parse_grid(["learning_rate=1e-4,2e-4", "lora_r=8,32"])
    points = sweep.expand(grid, seeds=[0, 1])
    assert len(points) == 8 and points[0].name == "lr1e-4_r8-seed0" and points[-1].name == "lr2e-4_r32-seed1"
    assert cli.main(["sweep", "--config", str(TINY_RECIPE), "--grid", "learning_rate=1e-4,2e-4", "--seeds", "0,1",
                     "--sweep_dir", str(tmp_path / "s"), "--dry_run", "--max_steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "4 run(s)" in out and "--learning_rate 2e-4 --seed 1 --output_dir" in out and "--max_steps 5" in out
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["--grid", "learning_rat=1e-4"], "did you mean"),        # caught before anything trains
    (["--grid", "learning_rate"], "KEY=VALUE"),
    (["--grid", "lora_r=8", "--lora_r", "16"], "set by the sweep"),
    (["--grid", "output_dir=a,b"], "cannot be swept"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, args, message):
    assert cli.main(["sweep", "--config", str(TINY_RECIPE), "--sweep_dir", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_subprocess_launcher_streams_and_logs_without_secrets(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_API_KEY", "fake-wandb-key-abcdef0123456789")
    log = tmp_path / "run" / "sweep.log"
    code = sweep.launch_subprocess(
        [sys.executable, "-c", "import os; print('key', os.environ['WANDB_API_KEY']); print('bye'); raise SystemExit(3)"],
        log)
    assert code == 3
    assert "bye" in capfd.readouterr().out  # echoed live
    text = log.read_text()
    assert "key ***" in text and "bye" in text and "fake-wandb-key" not in text


def test_parse_grid_rejects_duplicates():
    with pytest.raises(UserError, match="twice"):
        sweep.parse_grid(["lora_r=8", "lora_r=16"])


def test_relaunch_resumes_or_starts_over_what_a_kill_left(tmp_path):
    """A point killed before its first checkpoint holds a run with nothing to continue from: the relaunch
    starts it over (--overwrite), one with a checkpoint continues it, a finished one is left alone."""
    early, resumable, finished, fresh = (tmp_path / name for name in ("early", "resumable", "finished", "fresh"))
    (early / "validation").mkdir(parents=True)
    (early / "sweep.log").write_text("$ vlm-tune sft ...\n")  # the launcher's log is not the run's
    (resumable / "checkpoint-2").mkdir(parents=True)
    finished.mkdir()
    (finished / "run_summary.json").write_text("{}")
    assert sweep.relaunch_flags(early, []) == ["--overwrite"]
    assert sweep.relaunch_flags(early, ["--overwrite"]) == []  # already asked for
    assert sweep.relaunch_flags(resumable, []) == ["--resume_from_checkpoint", "true"]
    assert sweep.relaunch_flags(finished, []) == sweep.relaunch_flags(fresh, []) == []


def test_a_folder_holding_only_the_sweep_log_is_a_new_run(tmp_path):
    """The subprocess launcher opens RUN/sweep.log before the run starts: the run must not refuse its folder."""
    from types import SimpleNamespace

    from vlm_tune.train.run_folder import check_output_dir, run_entries

    run = tmp_path / "point"
    run.mkdir()
    (run / "sweep.log").write_text("$ vlm-tune sft ...\n")
    assert run_entries(run) == ([], [])
    check_output_dir(SimpleNamespace(output_dir=str(run), resume_from_checkpoint=None), overwrite=False)


def test_a_point_killed_before_its_first_checkpoint_runs_again(tiny_model_dir, tiny_chartqa_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    killed = sweep_dir / "lr1e-3"
    (killed / "validation").mkdir(parents=True)
    (killed / "validation" / "step-000000.jsonl").write_text("{}\n")
    state = sweep.run_sweep(str(TINY_RECIPE), {"learning_rate": ["1e-3"]}, sweep_dir,
                            common_overrides(tiny_model_dir, tiny_chartqa_dir), in_process=True, compare=False)
    assert [r["status"] for r in state["runs"]] == ["finished"]
    assert "--overwrite" in state["runs"][0]["command"] and (killed / "run_summary.json").is_file()
