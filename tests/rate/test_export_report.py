"""export -> the ratings builder unchanged; report -> groups ranked by the team's z-scored scores."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from helpers import REPO
from rate_helpers import image_tasks, response_tasks
from vlm_tune.core.errors import UserError, run_command
from vlm_tune.rate.command import main
from vlm_tune.rate.report import build_report, t_quantile
from vlm_tune.rate.store import RatingsStore
from vlm_tune.rate.tasks import load_tasks

RATERS = {"ann": 0, "bob": 1, "cy": -1}  # each rater's own offset: z-scores remove it


def seeded_image_store(folder, groups=("ckpt-a", "ckpt-b", "<i>ckpt-c</i>")):
    """Image mode: ckpt-b's images get the best scores, ckpt-a's the worst, from three raters of different
    leniency."""
    tasks = load_tasks(image_tasks(folder, groups=groups))
    store = RatingsStore(folder / "team.db")
    store.sync(tasks)
    quality = {"ckpt-a": 1, "ckpt-b": 4, "<i>ckpt-c</i>": 2}
    for item in tasks.items:
        k = int(item.image.rsplit("/", 1)[1][0])
        for rater, offset in RATERS.items():
            score = max(1, min(5, quality[item.group] + (k % 2) + offset))
            store.record(rater, item.item_id, {"image": score})
    return store, tasks


def seeded_response_store(folder):
    tasks = load_tasks(response_tasks(folder, n_items=3))
    store = RatingsStore(folder / "team.db")
    store.sync(tasks)
    for item in tasks.items:
        for rater, offset in RATERS.items():
            store.record(rater, item.item_id, {rid: max(1, min(5, 2 + k + offset)) for k, (rid, _) in enumerate(item.responses)})
    return store, tasks


def test_image_mode_export_is_the_builders_csv(tmp_path):
    store, tasks = seeded_image_store(tmp_path / "team")
    output = tmp_path / "out" / "ratings.csv"
    assert main(["export", "--db", str(store.path), "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert list(rows[0]) == ["image", "prompt", "rater", "score"]  # no response column: the builder's image mode
    assert len(rows) == len(tasks.items) * len(RATERS)
    assert rows[0]["image"].startswith("../team/samples/") and (output.parent / rows[0]["image"]).is_file()
    from data_builders.ratings.cli import main as build_main

    assert run_command(build_main, ["--ratings", str(output), "--output", str(tmp_path / "pairs"), "--allow_outside_images"]) == 0
    report = json.loads((tmp_path / "pairs" / "report.json").read_text())
    assert report["mode"] == "image" and report["rows_read"] == len(rows) and report["rows_used"] > 0
    assert report["dropped"]["missing image"] == 0 and report["dropped"]["duplicate rater×item"] == 0


def test_response_mode_export_through_python_m_builder(tmp_path):
    store, tasks = seeded_response_store(tmp_path / "team")
    output = tmp_path / "ratings.csv"
    assert main(["export", "--db", str(store.path), "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    assert list(rows[0]) == ["image", "prompt", "response", "rater", "score"]
    assert len(rows) == 3 * 3 * len(RATERS)
    assert "<script>alert(1)</script> & <b>bold</b>" in {row["response"] for row in rows}
    done = subprocess.run([sys.executable, "-m", "data_builders.ratings", "--ratings", str(output),
                           "--output", str(tmp_path / "pairs")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "pairs" / "report.json").read_text())
    assert report["mode"] == "response" and report["rows_read"] == len(rows)
    assert sum(report["pairs"][split] for split in ("train", "test")) == 3


def test_export_refuses_to_overwrite_and_leaves_removed_items_out(tmp_path):
    store, tasks = seeded_response_store(tmp_path / "team")
    output = tmp_path / "ratings.csv"
    output.write_text("precious\n")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        main(["export", "--db", str(store.path), "--output", str(output)])
    assert output.read_text() == "precious\n"
    path = tasks.path
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")  # drop the first item
    store.sync(load_tasks(path))
    assert main(["export", "--db", str(store.path), "--output", str(output), "--overwrite"]) == 0
    assert len(output.read_text().splitlines()) == 1 + 2 * 3 * len(RATERS)
    assert main(["export", "--db", str(store.path), "--output", str(output), "--overwrite", "--include_removed"]) == 0
    assert len(output.read_text().splitlines()) == 1 + 3 * 3 * len(RATERS)
    with pytest.raises(UserError, match="no such ratings database"):
        main(["export", "--db", str(tmp_path / "none.db"), "--output", str(tmp_path / "x.csv")])
    with pytest.raises(UserError, match="is a folder"):
        main(["export", "--db", str(store.path), "--output", str(tmp_path)])


def test_report_ranks_groups_with_intervals(tmp_path):
    store, _ = seeded_image_store(tmp_path / "team")
    data = build_report(store)
    names = [group.group for group in data["groups"]]
    assert names == ["ckpt-b", "<i>ckpt-c</i>", "ckpt-a"]
    best = data["groups"][0]
    assert best.low < best.mean_z < best.high and len(best.images) == 3
    assert data["agreement"]["alpha_raw"] is not None and data["agreement"]["alpha_z"] is not None
    assert main(["report", "--db", str(store.path), "--output", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    page = (tmp_path / "report" / "report.html").read_text()
    assert markdown.index("ckpt-b") < markdown.index("ckpt-a") and "95 % interval" in markdown
    assert "thumbs/" in markdown and all((tmp_path / "report" / "thumbs").glob("*.jpg"))
    assert page.count("data:image/jpeg;base64,") >= 6 and 'src="samples' not in page and "http" not in page
    assert "&lt;i&gt;ckpt-c&lt;/i&gt;" in page and "<i>ckpt-c</i>" not in page
    assert "\\<i\\>ckpt-c\\</i\\>" in markdown
    for rater in RATERS:
        assert rater in markdown and rater in page


def test_report_default_folder_response_mode_and_empty(tmp_path):
    store, _ = seeded_response_store(tmp_path / "team")
    assert main(["report", "--db", str(store.path)]) == 0
    assert (tmp_path / "team" / "team-report" / "report.html").is_file()
    empty = RatingsStore(tmp_path / "empty.db")
    empty.sync(load_tasks(response_tasks(tmp_path / "other")))
    with pytest.raises(UserError, match="no ratings yet"):
        main(["report", "--db", str(empty.path)])


def test_t_quantiles():
    assert t_quantile(1) == 12.706 and t_quantile(35) == 2.042 and t_quantile(1000) == 1.96


def test_command_line_errors():
    with pytest.raises(UserError):
        main([])
    with pytest.raises(UserError):
        main(["serve"])
    with pytest.raises(UserError, match="--port"):
        main(["serve", "tasks.jsonl", "--db", "x.db", "--port", "70000"])
