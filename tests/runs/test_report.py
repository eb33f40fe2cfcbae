"""`vlm-tune report` and `vlm-tune compare` on run folders laid out as sft writes them (no training:
the folders are written here, so these tests take a second or two)."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
