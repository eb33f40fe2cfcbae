"""Hostile inputs across the commands: each case is refused with exit code 2 and one `error: ...` line that
names what is wrong, and nothing is written, changed or deleted (the case's folders, the fixtures and the
working directory are hashed before and after).

A case is a function `(ctx) -> (argv, needles)`: it may prepare files first (a run folder, a file where a
folder should be), then returns the `vlm-tune` command line and the words the error line must contain.
Almost every case fails before a model loads, so the module takes seconds, not minutes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlm_tune import cli

from helpers import REPO, TINY_RECIPE, assert_one_line_error, sft_argv, tree_digest

DPO_RECIPE = REPO / "recipes" / "tiny" / "dpo_ratings.yaml"


# --- hostile data sets (built once from the session's tiny ChartQA) --------------------------
@pytest.fixture(scope="module")
def hostile_data(tmp_path_factory, tiny_chartqa_dir) -> dict[str, Path]:
    """Variants of the tiny ChartQA, each broken in one way."""
    import datasets

    base = datasets.load_from_disk(str(tiny_chartqa_dir))
    root = tmp_path_factory.mktemp("hostile-data")

    def corrupt(split: datasets.Dataset, row: int) -> datasets.Dataset:
        split = split.cast_column("image", datasets.Image(decode=False))
        return split.map(lambda r, i: {"image": {"bytes": b"\x89PNG\r\n\x1a\n garbage", "path": None}} if i == row else r,
                         with_indices=True)

    variants = {
        "label_int": {name: s.remove_columns("label").add_column("label", [7] * len(s)) for name, s in base.items()},
        "bad_test_image": {**base, "test": corrupt(base["test"], 3)},
        "bad_val_image": {**base, "val": corrupt(base["val"], 5)},
        "empty_test": {**base, "test": base["test"].select([])},
        "no_label": {name: s.remove_columns("label") for name, s in base.items()},
    }
    paths = {}
    for name, splits in variants.items():
        paths[name] = root / name
        datasets.DatasetDict(splits).save_to_disk(str(paths[name]))
    return paths


@dataclass
class Ctx:
    tmp: Path
    model: Path
    data: Path
    run: Path  # a finished tiny run (3 steps, no checkpoints), read-only: copy before changing
    hostile: dict[str, Path]

    def sft(self, out: Path | None = None, *extra: str, data: Path | None = None) -> list[str]:
        return ["sft", *sft_argv(self.model, data or self.data, out or self.tmp / "out", *extra)]

    def finished_run(self, name: str = "finished") -> Path:
        return Path(shutil.copytree(self.run, self.tmp / name))

    def recipe_args(self, *extra: str, data: Path | None = None) -> list[str]:
        return ["--config", str(TINY_RECIPE), "--model_name_or_path", str(self.model), "--dataset_name",
                str(data or self.data), "--build_tiny_model", "false", "--synthetic_dataset", "false", *extra]


# --- the cases -------------------------------------------------------------------------------
def _file(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _with_checkpoint(ctx: Ctx, state_text: str) -> Path:
    run = ctx.finished_run()
    checkpoint = run / "checkpoint-2"
    checkpoint.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(run / name, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(state_text)
    return run


def _damaged_run(ctx: Ctx, name: str, text: str) -> Path:
    run = ctx.finished_run()
    (run / name).write_text(text)
    return run


CASES = {
    # --- numbers the libraries reject late, and typos ---
    "sft-negative-batch": lambda c: (c.sft(None, "--per_device_train_batch_size", "-1"),
                                     ["per_device_train_batch_size", "at least 1", "-1"]),
    "sft-negative-rank": lambda c: (c.sft(None, "--lora_r", "-4"), ["lora_r must be at least 1", "-4"]),
    "sft-zero-accumulation": lambda c: (c.sft(None, "--gradient_accumulation_steps", "0"),
                                        ["gradient_accumulation_steps", "at least 1"]),
    "sft-negative-seed": lambda c: (c.sft(None, "--seed", "-1"), ["seed must be between 0"]),
    "sft-zero-max-steps": lambda c: (c.sft(None, "--max_steps", "0"), ["max_steps must be at least 1"]),
    "sft-zero-epochs": lambda c: (c.sft(None, "--max_steps", "-1", "--num_train_epochs", "0"),
                                  ["num_train_epochs must be positive"]),
    "sft-dropout-over-1": lambda c: (c.sft(None, "--lora_dropout", "2"), ["lora_dropout must be in [0, 1)"]),
    "sft-zero-eval-samples": lambda c: (c.sft(None, "--max_eval_samples", "0"), ["max_eval_samples must be at least 1"]),
    "sft-lora-rank-typo": lambda c: (c.sft(None, "--lora_rank", "8"), ["unknown flag --lora_rank", "did you mean --lora_r?"]),
    "sft-bad-scope": lambda c: (c.sft(None, "--lora_scope", "vision"), ["--lora_scope", "invalid choice: 'vision'"]),
    "sft-missing-recipe": lambda c: (["sft", "--config", str(c.tmp / "nope.yaml")], ["recipe file not found", "nope.yaml"]),
    "dpo-negative-beta": lambda c: (["dpo", "--config", str(DPO_RECIPE), "--beta", "-1", "--output_dir",
                                     str(c.tmp / "dpo")], ["beta must be positive"]),
    # --- the output folder ---
    "sft-output-is-a-file": lambda c: (c.sft(_file(c.tmp / "out.txt")), ["output_dir", "out.txt", "is a file"]),
    "sft-output-under-a-file": lambda c: (c.sft(_file(c.tmp / "f") / "run"), ["f is a file"]),
    "sft-into-finished-run": lambda c: (c.sft(c.finished_run()), ["already holds a finished run (3 steps)",
                                                                   "--overwrite", "--resume_from_checkpoint"]),
    "sft-into-foreign-folder": lambda c: (c.sft(_file(c.tmp / "mine" / "thesis.tex").parent),
                                          ["holds no vlm-tune run", "thesis.tex"]),
    "sft-overwrite-foreign-folder": lambda c: (c.sft(_file(c.tmp / "mine" / "notes.md").parent, "--overwrite"),
                                               ["holds no vlm-tune run", "notes.md"]),
    "sft-into-run-killed-early": lambda c: (c.sft(_file(c.tmp / "early" / "validation" / "step-000000.jsonl").parents[1]),
                                            ["an unfinished run with no checkpoint", "--overwrite"]),
    "sft-overwrite-and-resume": lambda c: (c.sft(c.finished_run(), "--overwrite", "--resume_from_checkpoint", "true"),
                                           ["choose one"]),
    "dpo-into-finished-run": lambda c: (["dpo", "--config", str(DPO_RECIPE), "--output_dir", str(c.finished_run()),
                                         "--model_name_or_path", str(c.model), "--build_tiny_model", "false",
                                         "--sample_ratings", "false", "--dataset_name", str(c.tmp / "pairs")],
                                        ["already holds a finished run"]),
    # --- resume ---
    "resume-missing-output": lambda c: (c.sft(c.tmp / "never-ran", "--resume_from_checkpoint", "true"),
                                        ["nothing to resume", "does not exist"]),
    "resume-missing-checkpoint": lambda c: (c.sft(None, "--resume_from_checkpoint", str(c.tmp / "out" / "checkpoint-9")),
                                            ["no checkpoint at", "checkpoint-9"]),
    "resume-no-checkpoint-left": lambda c: (c.sft(c.finished_run(), "--resume_from_checkpoint", "true",
                                                  "--max_steps", "6"), ["ended at step 3", "no checkpoint-N folder"]),
    "resume-other-lora-rank": lambda c: (c.sft(c.finished_run(), "--resume_from_checkpoint", "true", "--max_steps", "3",
                                                "--lora_r", "8"),
                                         ["trained with lora_r 32", "asks for 8"]),
    "resume-corrupt-state": lambda c: (c.sft(_with_checkpoint(c, '{"global_step": '), "--resume_from_checkpoint",
                                             "true", "--max_steps", "6"),
                                       ["checkpoint-2/trainer_state.json", "not a readable trainer state"]),
    # --- data, checked before the model loads ---
    "sft-label-of-wrong-type": lambda c: (c.sft(None, data=c.hostile["label_int"]),
                                          ["[train]", "column 'label' holds int64"]),
    "sft-corrupt-test-image": lambda c: (c.sft(None, data=c.hostile["bad_test_image"]),
                                         ["[test] row 3", "unreadable image"]),
    "sft-corrupt-val-image": lambda c: (c.sft(None, data=c.hostile["bad_val_image"]), ["[val] row 5", "unreadable image"]),
    "sft-empty-test-split": lambda c: (c.sft(None, data=c.hostile["empty_test"]), ["[test] is empty"]),
    "sft-missing-column": lambda c: (c.sft(None, data=c.hostile["no_label"]), ["lacks column(s) label"]),
    "sft-missing-split": lambda c: (c.sft(None, "--dataset_test_split", "holdout"), ["has no split 'holdout'"]),
    "sft-missing-dataset": lambda c: (c.sft(None, data=c.tmp / "no-data"), ["dataset not found", "no-data"]),
    # --- eval ---
    "eval-limit-0": lambda c: (["eval", *c.recipe_args("--limit", "0")], ["--limit must be at least 1, not 0"]),
    "eval-batch-0": lambda c: (["eval", *c.recipe_args("--batch_size", "0")], ["--batch_size must be at least 1"]),
    "eval-output-is-a-file": lambda c: (["eval", *c.recipe_args("--output_dir", str(_file(c.tmp / "e.txt")))],
                                        ["e.txt is a file"]),
    "eval-empty-test-split": lambda c: (["eval", *c.recipe_args(data=c.hostile["empty_test"])], ["[test] is empty"]),
    # --- plan ---
    "plan-missing-dataset": lambda c: (["plan", *c.recipe_args(data=c.tmp / "no-data")], ["dataset not found"]),
    "plan-zero-processes": lambda c: (["plan", *c.recipe_args("--num_processes", "0")],
                                      ["--num_processes must be at least 1"]),
    "plan-json-is-a-folder": lambda c: (["plan", *c.recipe_args("--json", str(c.tmp))], ["--json", "is a folder"]),
    # --- report and compare ---
    "report-corrupt-state": lambda c: (["report", str(_damaged_run(c, "trainer_state.json", '{"log_history": [1,'))],
                                       ["trainer_state.json: not valid JSON"]),
    "report-recipe-not-a-mapping": lambda c: (["report", str(_damaged_run(c, "recipe.yaml", "- a\n- b\n"))],
                                              ["recipe.yaml: expected a mapping"]),
    "compare-corrupt-recipe": lambda c: (["compare", str(c.run), str(_damaged_run(c, "recipe.yaml", "a: [1,\n")),
                                          "--output_dir", str(c.tmp / "cmp")], ["recipe.yaml: not valid YAML"]),
    "compare-output-is-a-file": lambda c: (["compare", str(c.run), str(c.finished_run("other")), "--output_dir",
                                            str(_file(c.tmp / "cmp.html"))], ["cmp.html is a file"]),
    "compare-corrupt-sweep": lambda c: (["compare", str(_file(c.tmp / "sweep" / "sweep.json", "{").parent)],
                                        ["sweep.json: not a readable sweep file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys, tiny_model_dir,
                                                      tiny_chartqa_dir, tiny_run_dir, hostile_data):
    monkeypatch.chdir(tmp_path)  # anything written to a default relative path would land here and be seen
    ctx = Ctx(tmp_path, tiny_model_dir, tiny_chartqa_dir, tiny_run_dir, hostile_data)
    argv, needles = CASES[case](ctx)
    watched = (tmp_path, tiny_model_dir, tiny_chartqa_dir, tiny_run_dir, *hostile_data.values())
    before = tree_digest(*watched)
    capsys.readouterr()

    code = cli.main(argv)

    err = capsys.readouterr().err
    assert_one_line_error(code, err, *needles)
    after = tree_digest(*watched)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{case} wrote or changed: {changed[:5]}"


def test_cases_cover_the_commands():
    prefixes = {name.split("-")[0] for name in CASES}
    assert {"sft", "dpo", "resume", "eval", "plan", "report", "compare"} <= prefixes and len(CASES) >= 30


def test_a_broken_summary_still_names_the_run_it_refuses(tmp_path, tiny_run_dir):
    from vlm_tune.train.run_folder import describe_run

    run = Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))
    assert describe_run(run) == "a finished run (3 steps)"
    (run / "run_summary.json").write_text("{broken")
    assert describe_run(run) == "a finished run (? steps)"
