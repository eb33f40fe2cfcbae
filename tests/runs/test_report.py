"""`vlm-tune report` and `vlm-tune compare` on run folders laid out as sft writes them (no training:
the folders are written here, so these tests take a second or two)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlm_tune import cli
from vlm_tune.runs.compare import config_differences
from vlm_tune.report.run import load_run


def make_run(path: Path, learning_rate: float = 1e-3, seed: int = 42, final_loss: float = 0.5,
             answers: tuple[str, str] = ("blue", "3")) -> Path:
    """A run folder with what sft leaves: recipe.yaml, run_summary.json, trainer_state.json,
    train_results.json, eval/*/metrics.json and validation samples at steps 0 and 20."""
    path.mkdir(parents=True)
    recipe = {"model_name_or_path": "artifacts/tiny-smolvlm", "lora_r": 32, "learning_rate": learning_rate,
              "seed": seed, "output_dir": str(path), "run_name": path.name, "max_steps": 20}
    (path / "recipe.yaml").write_text("# Resolved recipe of this run (YAML + command-line overrides). Re-run with:\n"
                                      f"#   vlm-tune sft --config r.yaml --output_dir {path}\n" + yaml.safe_dump(recipe))
    history = [{"step": s, "loss": 3.0 - s * (3.0 - final_loss) / 20, "learning_rate": learning_rate * (1 - s / 25),
                "mean_token_accuracy": s / 25} for s in (5, 10, 15, 20)]
    history += [{"step": s, "eval_loss": 2.5 - s / 20, "eval_runtime": 1.0} for s in (10, 20)]
    history += [{"step": 0, "eval_samples_relaxed_accuracy": 0.0}, {"step": 20, "eval_samples_relaxed_accuracy": 0.5}]
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": history}))
    (path / "train_results.json").write_text(json.dumps({"epoch": 1.0, "train_samples_per_second": 70.0,
                                                         "train_steps_per_second": 9.0}))
    (path / "run_summary.json").write_text(json.dumps({
        "steps": 20, "effective_batch": 8, "batch_arithmetic": "8 per device × 1 accumulation × 1 process(es)",
        "trainable_params": 1000, "total_params": 5000, "trainable_percent": 20.0, "train_loss": 1.2,
        "train_seconds": 12.5, "peak_rss_mb": 700.0, "eval_tuned_pct": 40.0, "eval_base_pct": 0.0}))
    for name, acc in (("base", 0.0), ("prior", 0.25), ("tuned", 0.4)):
        (path / "eval" / name).mkdir(parents=True)
        (path / "eval" / name / "metrics.json").write_text(json.dumps(
            {"relaxed_accuracy": acc, "n": 8, "per_type": {"color": {"relaxed_accuracy": acc, "n": 8}}}))
    (path / "validation" / "images").mkdir(parents=True)
    samples = [(0, "Which colour is the bar?", "blue"), (4, "How many bars?", "3")]
    for index, _, _ in samples:
        Image.new("RGB", (32, 32), (200, 30 * index, 40)).save(path / "validation" / "images" / f"{index:03d}.png")
    for step, predictions in ((0, ("880880", "880880")), (20, answers)):
        rows = [{"step": step, "index": i, "image": f"images/{i:03d}.png", "prompt": q, "reference": ref,
                 "labels": [ref], "prediction": p, "correct": float(p == ref)}
                for (i, q, ref), p in zip(samples, predictions)]
        (path / "validation" / f"step-{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_is_self_contained_html_and_markdown_with_its_images(tmp_path, capsys):
    run = make_run(tmp_path / "run-a", answers=("blue", "4"))
    assert cli.main(["report", str(run)]) == 0

    page = (run / "report.html").read_text()
    # self-contained: every <img> is a data URI (3 plots + 2 samples × first/last rows share one image column)
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    for text in ("Effective batch".lower(), "8 per device × 1 accumulation", "step 0", "step 20", "text-only prior",
                 "peak ram", "samples/s", "Validation samples: first vs last checkpoint"):
        assert text.lower() in page.lower(), text
    assert 'class="ok"' in page and 'class="bad"' in page  # predictions coloured by correctness

    markdown = (run / "report.md").read_text()
    links = re.findall(r'\]\(([^)]+\.png)\)|src="([^"]+\.png)"', markdown)
    linked = {a or b for a, b in links}
    assert {"report_files/loss.png", "report_files/learning_rate.png", "report_files/accuracy.png",
            "validation/images/000.png"} <= linked
    assert all((run / link).is_file() for link in linked)


def test_compare_lists_only_the_keys_that_differ(tmp_path):
    a = make_run(tmp_path / "sweep" / "lr1e-3", learning_rate=1e-3, answers=("blue", "4"))
    b = make_run(tmp_path / "sweep" / "lr2e-4", learning_rate=2e-4, final_loss=1.5, answers=("red", "3"))
    assert cli.main(["compare", str(a), str(b)]) == 0

    out = tmp_path / "sweep" / "compare"
    table = json.loads((out / "compare.json").read_text())
    assert table["differing_keys"] == ["learning_rate"]  # output_dir / run_name identify runs, they are no config
    header = next(line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| run |"))
    assert "learning_rate" in header and "lora_r" not in header and "seed" not in header
    for name in ("compare.html", "loss.png", "learning_rate.png", "accuracy.png", "gallery.png"):
        assert (out / name).is_file(), name
    page = (out / "compare.html").read_text()
    assert "lr1e-3 (step 20)" in page and "lr2e-4 (step 20)" in page  # the same samples, one column per run


def test_config_differences_and_seed_noise(tmp_path):
    assert config_differences([{"a": 1, "b": 2, "output_dir": "x"}, {"a": 1, "b": 3, "output_dir": "y"}]) == ["b"]
    assert config_differences([{"a": 1}, {"a": 1, "c": 0}]) == ["c"]  # set in one, default in the other
    runs = [make_run(tmp_path / f"lr{lr}-seed{s}", learning_rate=lr, seed=s, final_loss=0.5 + s / 10)
            for lr in (1e-3, 2e-4) for s in (0, 1)]
    assert cli.main(["compare", *map(str, runs), "--output_dir", str(tmp_path / "cmp")]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["differing_keys"] == ["learning_rate", "seed"]
    assert "Noise across seeds" in (tmp_path / "cmp" / "compare.md").read_text()
    assert load_run(runs[0]).command.startswith("vlm-tune sft --config r.yaml")


def test_report_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    assert cli.main(["compare", str(make_run(tmp_path / "only"))]) == 2
    assert "at least two" in capsys.readouterr().err


def make_dpo_run(path: Path) -> Path:
    """A run folder as dpo leaves it: no validation samples, no held-out eval; preference accuracy instead."""
    path.mkdir(parents=True)
    recipe = {"model_name_or_path": "artifacts/tiny-smolvlm", "lora_r": 32, "learning_rate": 5e-4, "beta": 0.1,
              "loss_type": ["sigmoid"], "output_dir": str(path), "max_steps": 10}
    (path / "recipe.yaml").write_text("# Resolved recipe of this run (YAML + command-line overrides). Re-run with:\n"
                                      f"#   vlm-tune dpo --config d.yaml --output_dir {path}\n" + yaml.safe_dump(recipe))
    history = [{"step": s, "loss": 0.69 - s / 100, "learning_rate": 5e-4, "rewards/accuracies": s / 10} for s in (5, 10)]
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 10, "log_history": history}))
    (path / "run_summary.json").write_text(json.dumps({
        "steps": 10, "effective_batch": 4, "train_loss": 0.66, "train_seconds": 3.0, "peak_rss_mb": 600.0,
        "pref_accuracy_before_pct": 50.0, "pref_accuracy_after_pct": 75.0}))
    (path / "preference_eval.json").write_text(json.dumps({
        "before": {"preference_accuracy": 0.5, "mean_margin": 0.0, "n": 8},
        "after": {"preference_accuracy": 0.75, "mean_margin": 0.3, "n": 8}}))
    return path


def test_compare_an_sft_run_with_a_dpo_run(tmp_path):
    sft_run = make_run(tmp_path / "runs" / "sft")
    dpo_run = make_dpo_run(tmp_path / "runs" / "dpo")
    assert cli.main(["compare", str(sft_run), str(dpo_run)]) == 0

    table = json.loads((tmp_path / "runs" / "compare" / "compare.json").read_text())
    assert table["differing_keys"][0] == "job" and "beta" in table["differing_keys"]
    sft_row, dpo_row = table["rows"]
    assert sft_row["config"]["job"] == "sft" and dpo_row["config"]["job"] == "dpo"
    # each run's own metrics side by side; the shared ones for both
    assert sft_row["metrics"]["held-out tuned %"] == 40.0 and "pref accuracy after %" not in sft_row["metrics"]
    assert dpo_row["metrics"]["pref accuracy after %"] == 75.0
    assert sft_row["metrics"]["steps"] == 20 and dpo_row["metrics"]["steps"] == 10
    page = (tmp_path / "runs" / "compare" / "compare.html").read_text()
    assert "sft (step 20)" in page  # the SFT run's samples; the DPO run has none and is left out of the gallery


def test_compare_writes_all_or_nothing(tmp_path, monkeypatch):
    from vlm_tune.runs import compare

    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", learning_rate=5e-4)
    out = tmp_path / "out" / "cmp"

    def broken_gallery(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(compare, "gallery_png", broken_gallery)
    with pytest.raises(RuntimeError):
        compare.compare_runs([a, b], out)
    assert not (tmp_path / "out").exists()  # no half-written comparison, no stray staging folder

    monkeypatch.undo()
    (out).mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    compare.compare_runs([a, b], out)
    assert (out / "compare.json").is_file() and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cmp"]  # staging folder gone


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "trainer_state.json").write_text('{"global_step": 20, "log_hist'), "trainer_state.json: not valid JSON"),
    (lambda run: (run / "trainer_state.json").write_text('[1, 2]'), "trainer_state.json: expected a JSON object"),
    (lambda run: (run / "recipe.yaml").write_text("a: [1,\n"), "recipe.yaml: not valid YAML"),
    (lambda run: (run / "recipe.yaml").write_text("- a\n- b\n"), "recipe.yaml: expected a mapping"),
    (lambda run: (run / "run_summary.json").write_bytes(b"\xff\xfe\x00garbage"), "run_summary.json: not valid JSON"),
])
def test_corrupt_run_files_are_one_line_in_report_and_compare(tmp_path, capsys, damage, message):
    good = make_run(tmp_path / "good")
    bad = make_run(tmp_path / "bad")
    damage(bad)
    for argv in (["report", str(bad)], ["compare", str(good), str(bad)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (bad / "report.html").exists() and not (tmp_path / "compare").exists()
