"""Hostile inputs across the commands: each case is refused with exit code 2 and one `error: ...` line that
names what is wrong, and nothing is written, changed or deleted (the case's folders, the fixtures and the
working directory are hashed before and after).

A case is a function `(ctx) -> (argv, needles)`: it may prepare files first (a run folder, a file where a
folder should be, a read-only mount), then returns the `vlm-tune` command line (or `ratings-builder ...` for
`python -m data_builders.ratings`) and the words the error line must contain.
Almost every case fails before a model loads, so the module takes seconds, not minutes.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vlm_tune import cli
from vlm_tune.core.errors import run_command

from helpers import REPO, TINY_RECIPE, assert_one_line_error, sft_argv, tree_digest
from hostile_helpers import other_architecture, other_weights, read_only_folder

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


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Bases the tiny run's adapter was not trained on: other weights, another architecture."""
    root = tmp_path_factory.mktemp("bases")
    return {"other_weights": other_weights(tiny_model_dir, root / "other-weights"),
            "other_arch": other_architecture(tiny_model_dir, root / "other-arch")}


@pytest.fixture(scope="module")
def hostile_pairs(tmp_path_factory) -> dict[str, Path]:
    """DPO preference datasets, each broken in one way."""
    import io

    import datasets
    from PIL import Image

    from data_builders.ratings import FEATURES

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(buffer, format="PNG")
    good = {"bytes": buffer.getvalue(), "path": None}

    def rows(n: int, broken: dict | None = None) -> dict:
        row = {"images": [good], "prompt": [{"role": "user", "content": "Which colour?"}],
               "chosen": [{"role": "assistant", "content": "red"}], "rejected": [{"role": "assistant", "content": "blue"}],
               "group": "g", "chosen_score": 5.0, "rejected_score": 1.0, "margin": 4.0, "n_raters": 2}
        table = [dict(row) for _ in range(n)]
        if broken:
            table[2].update(broken)
        return {key: [r[key] for r in table] for key in row}

    root = tmp_path_factory.mktemp("hostile-pairs")
    variants = {
        "bad_image": {"train": rows(4, {"images": [{"bytes": b"\x89PNG\r\n\x1a\n garbage", "path": None}]}),
                      "test": rows(3)},
        "empty_chosen": {"train": rows(4, {"chosen": [{"role": "assistant", "content": " "}]}), "test": rows(3)},
        "no_train": {"test": rows(3)},
    }
    paths = {}
    for name, splits in variants.items():
        paths[name] = root / name
        datasets.DatasetDict({split: datasets.Dataset.from_dict(columns, features=FEATURES)
                              for split, columns in splits.items()}).save_to_disk(str(paths[name]))
    return paths


@dataclass
class Ctx:
    tmp: Path
    model: Path
    data: Path
    run: Path  # a finished tiny run (3 steps, no checkpoints), read-only: copy before changing
    hostile: dict[str, Path]
    bases: dict[str, Path]
    pairs: dict[str, Path]
    cleanups: list = field(default_factory=list)  # context managers to leave after the case (mounts)

    def sft(self, out: Path | None = None, *extra: str, data: Path | None = None) -> list[str]:
        return ["sft", *sft_argv(self.model, data or self.data, out or self.tmp / "out", *extra)]

    def finished_run(self, name: str = "finished") -> Path:
        return Path(shutil.copytree(self.run, self.tmp / name))

    def recipe_args(self, *extra: str, data: Path | None = None, model: Path | None = None) -> list[str]:
        return ["--config", str(TINY_RECIPE), "--model_name_or_path", str(model or self.model), "--dataset_name",
                str(data or self.data), "--build_tiny_model", "false", "--synthetic_dataset", "false", *extra]

    def dpo(self, pairs: Path, *extra: str) -> list[str]:
        return ["dpo", "--config", str(DPO_RECIPE), "--model_name_or_path", str(self.model), "--build_tiny_model",
                "false", "--sample_ratings", "false", "--dataset_name", str(pairs), "--output_dir",
                str(self.tmp / "dpo"), *extra]

    def images(self, name: str = "images", count: int = 2) -> Path:
        from PIL import Image

        folder = self.tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(folder / f"{i}.png")
        return folder

    def caption(self, folder: Path, *extra: str) -> list[str]:
        return ["caption", str(folder), "--model", str(self.model), *extra]

    def ratings(self, lines: list[str], name: str = "ratings.csv") -> Path:
        folder = self.images("team")
        path = folder / name
        path.write_text("\n".join(lines) + "\n")
        return path


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


RATINGS_HEADER = "image,prompt,response,rater,score"
RATINGS_ROWS = [f"{i}.png,describe,{answer},{rater},{score}" for i in range(2) for rater in "ab"
                for answer, score in (("good", 5), ("bad", 1))]


def _ratings_argv(c: Ctx, lines: list[str], *extra: str) -> list[str]:
    return ["ratings-builder", "--ratings", str(c.ratings(lines)), "--output", str(c.tmp / "pairs-out"), *extra]


def _outside_image(c: Ctx, absolute: bool) -> list[str]:
    from PIL import Image

    Image.new("RGB", (16, 16)).save(c.tmp / "private.png")
    name = str(c.tmp / "private.png") if absolute else "../private.png"
    return _ratings_argv(c, [RATINGS_HEADER] + [row.replace("0.png", name, 1) for row in RATINGS_ROWS])


def _symlink_loop(c: Ctx) -> Path:
    folder = c.images()
    (folder / "loop.png").symlink_to("loop.png")
    return folder


def _read_only_images(c: Ctx) -> Path:
    c.cleanups.append(read_only_folder(c.tmp / "read-only", lambda folder: c.images(folder.name)))
    return c.cleanups[-1].__enter__()


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
    # --- an adapter on a base it was not trained on (the run's base_fingerprint.json) ---
    "eval-adapter-other-weights": lambda c: (["eval", *c.recipe_args("--adapter", str(c.run),
                                                                    model=c.bases["other_weights"])],
                                             ["trained on other weights than", "other-weights", "--force_base"]),
    "eval-adapter-other-architecture": lambda c: (["eval", *c.recipe_args("--adapter", str(c.run),
                                                                         model=c.bases["other_arch"])],
                                                  ["another architecture", "other-arch"]),
    "eval-corrupt-test-image": lambda c: (["eval", *c.recipe_args(data=c.hostile["bad_test_image"])],
                                          ["[test] row 3", "unreadable image"]),
    "caption-adapter-other-weights": lambda c: (["caption", str(c.images()), "--adapter", str(c.run), "--model",
                                                 str(c.bases["other_weights"])], ["trained on other weights", "--model"]),
    "export-adapter-other-weights": lambda c: (["export", "--adapter", str(c.run), "--output", str(c.tmp / "merged"),
                                                "--base", str(c.bases["other_weights"])],
                                               ["trained on other weights than --base", "--force_base"]),
    "export-adapter-other-architecture": lambda c: (["export", "--adapter", str(c.run), "--output",
                                                     str(c.tmp / "merged"), "--base", str(c.bases["other_arch"])],
                                                    ["another architecture", "--base"]),
    # --- dpo pairs, checked before the model loads ---
    "dpo-corrupt-pair-image": lambda c: (c.dpo(c.pairs["bad_image"]), ["[train] row 2", "image 1 is unreadable"]),
    "dpo-empty-chosen": lambda c: (c.dpo(c.pairs["empty_chosen"]), ["[train] row 2", "chosen: no text"]),
    "dpo-missing-train-split": lambda c: (c.dpo(c.pairs["no_train"]), ["has no split 'train'"]),
    # --- caption: the folder's file system ---
    "caption-sidecar-is-a-folder": lambda c: (c.caption(_file(c.images() / "1.txt" / "x").parent.parent),
                                              ["1.txt is a folder", "caption of 1.png"]),
    "caption-metadata-is-a-folder": lambda c: (c.caption(_file(c.images() / "metadata.jsonl" / "x").parent.parent,
                                                         "--format", "diffusers"), ["metadata.jsonl is a folder"]),
    "caption-symlink-loop": lambda c: (c.caption(_symlink_loop(c)), ["loop.png is a symlink loop"]),
    "caption-report-dir-is-a-file": lambda c: (c.caption(c.images(), "--report_dir", str(_file(c.tmp / "r.md"))),
                                               ["--report_dir", "r.md is a file"]),
    "caption-read-only-folder": lambda c: (c.caption(_read_only_images(c)), ["cannot write in", "read-only"]),
    "caption-lint-symlink-loop": lambda c: (["caption-lint", str(_symlink_loop(c))], ["loop.png is a symlink loop"]),
    # --- the ratings builder ---
    "ratings-semicolons": lambda c: (_ratings_argv(c, [line.replace(",", ";") for line in [RATINGS_HEADER, *RATINGS_ROWS]]),
                                     ["separated by semicolons, not commas"]),
    "ratings-tabs": lambda c: (_ratings_argv(c, [line.replace(",", "\t") for line in [RATINGS_HEADER, *RATINGS_ROWS]]),
                               ["separated by tabs, not commas"]),
    "ratings-image-outside-dotdot": lambda c: (_outside_image(c, absolute=False),
                                               ["line 2", "'../private.png' is outside", "--allow_outside_images"]),
    "ratings-image-outside-absolute": lambda c: (_outside_image(c, absolute=True),
                                                 ["line 2", "private.png' is outside", "--allow_outside_images"]),
}


def _run(argv: list[str]) -> int:
    if argv[0] == "ratings-builder":  # `python -m data_builders.ratings ...`
        from data_builders.ratings.cli import main as build_pairs_main

        return run_command(build_pairs_main, argv[1:])
    return cli.main(argv)


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys, tiny_model_dir,
                                                      tiny_chartqa_dir, tiny_run_dir, hostile_data, bases,
                                                      hostile_pairs):
    monkeypatch.chdir(tmp_path)  # anything written to a default relative path would land here and be seen
    ctx = Ctx(tmp_path, tiny_model_dir, tiny_chartqa_dir, tiny_run_dir, hostile_data, bases, hostile_pairs)
    with ExitStack() as mounts:
        argv, needles = CASES[case](ctx)
        for cleanup in ctx.cleanups:
            mounts.push(cleanup.__exit__)
        watched = (tmp_path, tiny_model_dir, tiny_chartqa_dir, tiny_run_dir, *hostile_data.values(), *bases.values(),
                   *hostile_pairs.values())
        before = tree_digest(*watched)
        capsys.readouterr()

        code = _run(argv)

        err = capsys.readouterr().err
        assert_one_line_error(code, err, *needles)
        after = tree_digest(*watched)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{case} wrote or changed: {changed[:5]}"


def test_cases_cover_the_commands():
    prefixes = {name.split("-")[0] for name in CASES}
    assert {"sft", "dpo", "resume", "eval", "plan", "report", "compare", "caption", "export", "ratings"} <= prefixes
    assert len(CASES) >= 60


def test_a_broken_summary_still_names_the_run_it_refuses(tmp_path, tiny_run_dir):
    from vlm_tune.train.run_folder import describe_run

    run = Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))
    assert describe_run(run) == "a finished run (3 steps)"
    (run / "run_summary.json").write_text("{broken")
    assert describe_run(run) == "a finished run (? steps)"
