"""Tests for data_builders.ratings (ratings -> DPO pairs) and data_builders.sample_ratings."""

import io
import json
import re

import datasets
import krippendorff
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_builders.ratings import (
    REASONS,
    RatingsError,
    _csv_record_lines,
    _group_id,
    _nonblank_lines,
    agreement,
    build_pairs,
    interval_alpha,
    main,
    save_pairs,
)
from data_builders.chartqa import sample_chart
from data_builders.sample_ratings import QUESTION_TYPES, make_sample_ratings
from vlm_tune.core.errors import run_command

# --- helpers ---

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60), "gray": (128, 128, 128)}


def _png(color=(128, 128, 128), size=8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(folder, *names, color=(128, 128, 128)):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(color))


def _write_csv(path, rows, header=("image", "prompt", "response", "rater", "score")):
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return path


def _all_rows(dataset_dict):
    return [row for split in dataset_dict.values() for row in split]


def _check_invariants(dataset_dict, report):
    assert report["rows_read"] == report["rows_used"] + sum(report["dropped"].values())
    assert set(report["dropped"]) == set(REASONS)
    margin = report["margin"]
    for row in _all_rows(dataset_dict):
        assert row["chosen_score"] > row["rejected_score"] + margin  # never a tie
        assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        assert row["chosen"] != row["rejected"]
    groups = {split: set(ds["group"]) for split, ds in dataset_dict.items()}
    if len(groups) == 2:
        assert not groups["train"] & groups["test"]
    assert report["pairs"]["train"] + report["pairs"]["test"] == sum(len(ds) for ds in dataset_dict.values())


def _matrix(frame, item_columns):
    """raters x items matrix of raw scores, NaN where not rated."""
    frame = frame.assign(item=frame[list(item_columns)].astype(str).agg("\x1f".join, axis=1))
    return frame.pivot_table(index="rater", columns="item", values="score", aggfunc="first").to_numpy(dtype=float)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample") / "ratings"
    csv_path = make_sample_ratings(folder, seed=0, n_charts=30, n_raters=5)
    dataset_dict, report = build_pairs(csv_path)
    return csv_path, dataset_dict, report


# --- sample set ---


def test_sample_ratings_shape_and_determinism(sample, tmp_path):
    csv_path, _, _ = sample
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == ["image", "prompt", "response", "rater", "score"]
    assert set(frame["rater"]) == {"Aiko", "Björn", "Chloé", "Dmitri", "Eun-ji"}
    assert frame["score"].between(1, 5).all() and (frame["score"] == frame["score"].round()).all()
    per_chart = frame.groupby("image")["response"].nunique()
    assert per_chart.between(3, 4).all() and len(per_chart) == 30
    assert all((csv_path.parent / image).is_file() for image in frame["image"].unique())
    means = frame.groupby("rater")["score"].mean()
    assert means["Björn"] > means["Aiko"] > means["Chloé"]  # lenient, plain, harsh
    again = make_sample_ratings(tmp_path / "again", seed=0, n_charts=30, n_raters=5)
    assert again.read_bytes() == csv_path.read_bytes()
    other = make_sample_ratings(tmp_path / "other", seed=1, n_charts=30, n_raters=5)
    assert other.read_bytes() != csv_path.read_bytes()
    with pytest.raises(FileExistsError):
        make_sample_ratings(tmp_path / "again", seed=0, n_charts=30)


def test_sample_pairs_invariants(sample):
    csv_path, dataset_dict, report = sample
    _check_invariants(dataset_dict, report)
    assert report["mode"] == "response" and report["rows_read"] == len(pd.read_csv(csv_path))
    assert report["pairs"]["train"] + report["pairs"]["test"] == 30  # best-worst: one per chart
    assert report["pairs"]["test"] >= 1
    row = dataset_dict["train"][0]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith("?")
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert row["n_raters"] == 5
    flagged = {r["rater"] for r in report["raters"] if r["disagrees_with_everyone"]}
    assert flagged == {"Eun-ji"}  # the length rater
    # the team prefers correct answers: the chosen response is nearly always a correct one
    answers = {}
    for i in range(30):
        spec = sample_chart(np.random.default_rng([0, i]), QUESTION_TYPES)
        answers[_group_id(f"images/chart_{i:04d}.png", spec.query)] = spec.answer
    rows = _all_rows(dataset_dict)

    def correct(row, side):
        return answers[row["group"]] in re.findall(r"[a-z0-9]+", row[side][0]["content"].lower())

    assert sum(correct(r, "chosen") for r in rows) >= 0.9 * len(rows)
    assert sum(correct(r, "rejected") for r in rows) <= 0.2 * len(rows)


def test_alpha_equals_krippendorff_on_the_same_matrix(sample):
    csv_path, _, report = sample
    frame = pd.read_csv(csv_path)
    matrix = _matrix(frame, ("image", "prompt", "response"))
    for level in ("interval", "ordinal"):
        expected = krippendorff.alpha(reliability_data=matrix, value_domain=[1, 2, 3, 4, 5], level_of_measurement=level)
        assert report["agreement"][f"alpha_{level}"] == pytest.approx(expected, abs=1e-12)
    assert report["agreement"]["alpha_items_used"] == matrix.shape[1]


def test_alpha_with_gaps_and_the_exact_fallback(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for item in range(60):
        quality = rng.integers(1, 8)
        for rater in rng.choice(6, size=rng.integers(1, 6), replace=False):  # some items have 1 rater
            score = int(np.clip(quality + rng.integers(-1, 2), 1, 7))
            rows.append((f"g{item // 3}", f"r{item}", f"rater{rater}", score))
    frame = pd.DataFrame(rows, columns=["group", "response", "rater", "score"])
    _images(tmp_path, "x.png")
    csv_path = _write_csv(
        tmp_path / "r.csv",
        [("x.png", g, resp, r, s) for g, resp, r, s in rows],
    )
    _, report = build_pairs(csv_path, scale="1-7", min_raters=1)
    matrix = _matrix(frame.rename(columns={"group": "prompt"}), ("prompt", "response"))
    domain = np.arange(1, 8)
    for level in ("interval", "ordinal"):
        expected = krippendorff.alpha(reliability_data=matrix, value_domain=domain, level_of_measurement=level)
        assert report["agreement"][f"alpha_{level}"] == pytest.approx(expected, abs=1e-12)
        items = pd.factorize(frame["group"] + "/" + frame["response"])[0]
        exact = agreement(items, frame["score"].to_numpy(float), domain.astype(float), force_exact=True)
        assert exact[f"alpha_{level}"] == pytest.approx(expected, abs=1e-12)
    # closed-form interval alpha (used for z-scores) equals the package on arbitrary reals
    values = frame["score"].to_numpy(float) + rng.normal(0, 0.3, len(frame))
    real_matrix = _matrix(frame.assign(score=values).rename(columns={"group": "prompt"}), ("prompt", "response"))
    expected = krippendorff.alpha(reliability_data=real_matrix, level_of_measurement="interval")
    assert interval_alpha(items, values) == pytest.approx(expected, abs=1e-10)


# --- aggregation and pairs ---


def test_zscore_on_and_off_aggregate_as_expected(tmp_path):
    # P spreads over the whole scale, Q uses 4-5 only: raw means prefer B, z-scores prefer A.
    _images(tmp_path, "g.png", "f.png")
    rows = [
        ("g.png", "pick", "A", "P", 3), ("g.png", "pick", "B", "P", 5),
        ("g.png", "pick", "A", "Q", 5), ("g.png", "pick", "B", "Q", 4),
    ]
    for k, (p, q) in enumerate(((1, 4), (1, 5), (5, 4))):
        rows += [("f.png", "fill", f"F{k}", "P", p), ("f.png", "fill", f"F{k}", "Q", q)]
    csv_path = _write_csv(tmp_path / "r.csv", rows)
    frame = pd.DataFrame(rows, columns=["image", "prompt", "response", "rater", "score"])
    z = frame.groupby("rater")["score"].transform(lambda s: (s - s.mean()) / s.std(ddof=0))
    expected = {True: frame.assign(v=z), False: frame.assign(v=frame["score"].astype(float))}
    for zscore in (True, False):
        dataset_dict, report = build_pairs(csv_path, zscore=zscore, test_size=0)
        _check_invariants(dataset_dict, report)
        means = expected[zscore].groupby("response")["v"].mean()
        pick = [r for r in dataset_dict["train"] if r["prompt"][0]["content"] == "pick"][0]
        winner = "A" if zscore else "B"
        assert pick["chosen"][0]["content"] == winner
        assert pick["chosen_score"] == pytest.approx(means[winner])
        assert pick["rejected_score"] == pytest.approx(means["B" if zscore else "A"])
        assert report["score_units"] == ("z" if zscore else "raw")


def _strategy_file(tmp_path):
    _images(tmp_path, "a.png", "b.png")
    rows = []
    for image, scores in (("a.png", (5, 4, 3, 2)), ("b.png", (5, 3, 1))):
        for k, score in enumerate(scores):
            for rater in ("Ana", "Ben"):
                rows.append((image, "Describe it.", f"{image} answer {k}", rater, score))
    return _write_csv(tmp_path / "r.csv", rows)


@pytest.mark.parametrize(
    "pairs,margin,expected",
    [
        ("best-worst", 0.0, 2),
        ("all", 0.0, 6 + 3),
        ("adjacent", 0.0, 3 + 2),
        ("all", 1.5, 3 + 3),  # differences > 1.5 only
        ("adjacent", 1.5, 0 + 2),
    ],
)
def test_pair_strategy_counts(tmp_path, pairs, margin, expected):
    csv_path = _strategy_file(tmp_path)
    dataset_dict, report = build_pairs(csv_path, zscore=False, pairs=pairs, margin=margin, test_size=0)
    _check_invariants(dataset_dict, report)
    assert len(dataset_dict["train"]) == expected
    assert report["pairs_strategy"] == pairs
    if pairs == "best-worst":
        assert report["dropped"]["not selected"] == 2 * 3  # the three middle items, two raters each


def test_ties_never_pair_and_are_reported(tmp_path):
    _images(tmp_path, "a.png", "b.png")
    rows = [
        ("a.png", "q", "same one", "Ana", 4), ("a.png", "q", "same one", "Ben", 3),
        ("a.png", "q", "same two", "Ana", 3), ("a.png", "q", "same two", "Ben", 4),  # equal raw means
        ("b.png", "q", "good", "Ana", 5), ("b.png", "q", "good", "Ben", 5),
        ("b.png", "q", "bad", "Ana", 1), ("b.png", "q", "bad", "Ben", 2),
    ]
    csv_path = _write_csv(tmp_path / "r.csv", rows)
    dataset_dict, report = build_pairs(csv_path, zscore=False, pairs="all", test_size=0)
    _check_invariants(dataset_dict, report)
    assert len(dataset_dict["train"]) == 1 and report["dropped"]["tie"] == 4
    assert report["pairs"]["removed_as_ties"] == 1


def test_length_match_drops_pairs_with_very_different_lengths(tmp_path):
    _images(tmp_path, "a.png", "b.png")
    rows = [
        ("a.png", "q", "Yes.", "Ana", 5), ("a.png", "q", "Yes.", "Ben", 5),
        ("a.png", "q", "Well, it could be yes, but it could be no as well.", "Ana", 1),
        ("a.png", "q", "Well, it could be yes, but it could be no as well.", "Ben", 2),
        ("b.png", "q", "Three bars.", "Ana", 5), ("b.png", "q", "Three bars.", "Ben", 4),
        ("b.png", "q", "Four bars.", "Ana", 2), ("b.png", "q", "Four bars.", "Ben", 1),
    ]
    csv_path = _write_csv(tmp_path / "r.csv", rows)
    plain, _ = build_pairs(csv_path, test_size=0)
    assert len(plain["train"]) == 2
    matched, report = build_pairs(csv_path, length_match=0.5, test_size=0)
    _check_invariants(matched, report)
    assert [r["chosen"][0]["content"] for r in matched["train"]] == ["Three bars."]
    assert report["dropped"]["length mismatch"] == 4 and report["pairs"]["removed_by_length_match"] == 1
    for row in matched["train"]:
        a, b = len(row["chosen"][0]["content"]), len(row["rejected"][0]["content"])
        assert min(a, b) / max(a, b) >= 0.5


# --- image mode ---


def _image_mode_file(tmp_path, n_prompts=40):
    _images(tmp_path, "red.png", color=COLORS["red"])
    _images(tmp_path, "blue.png", color=COLORS["blue"])
    rows = []
    for p in range(n_prompts):
        for rater, (good, bad) in (("Ana", (5, 1)), ("Ben", (4, 2)), ("Cem", (5, 2))):
            rows += [("red.png", f"a red thing no. {p}", rater, good), ("blue.png", f"a red thing no. {p}", rater, bad)]
    return _write_csv(tmp_path / "r.csv", rows, header=("image", "prompt", "rater", "score"))


def _better_is_red(row):
    first = "first" == row["chosen"][0]["content"]
    shown = row["images"][0 if first else 1].convert("RGB").getpixel((0, 0))
    return shown == COLORS["red"]


def test_image_mode_balanced_positions(tmp_path):
    dataset_dict, report = build_pairs(_image_mode_file(tmp_path), test_size=0)
    _check_invariants(dataset_dict, report)
    rows = list(dataset_dict["train"])
    assert report["mode"] == "image" and len(rows) == 40
    answers = [r["chosen"][0]["content"] for r in rows]
    assert answers.count("first") == answers.count("second") == 20
    assert report["position_balance"]["train"] == {"better_first": 20, "better_second": 20}
    for row in rows:
        assert len(row["images"]) == 2
        assert {row["chosen"][0]["content"], row["rejected"][0]["content"]} == {"first", "second"}
        assert "a red thing no." in row["prompt"][0]["content"] and "'first' or 'second'" in row["prompt"][0]["content"]
        assert _better_is_red(row)
    again, _ = build_pairs(_image_mode_file(tmp_path), test_size=0)
    assert [r["chosen"] for r in again["train"]] == [r["chosen"] for r in rows]  # seeded


def test_image_mode_both_orders(tmp_path):
    dataset_dict, report = build_pairs(_image_mode_file(tmp_path, 10), both_orders=True, test_size=0.2)
    _check_invariants(dataset_dict, report)
    rows = _all_rows(dataset_dict)
    assert len(rows) == 20 and report["pairs"]["distinct_pairs"] == 10
    by_group = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row["chosen"][0]["content"])
        assert _better_is_red(row)
    assert all(sorted(v) == ["first", "second"] for v in by_group.values())


# --- splits ---


def test_split_is_by_group_and_seeded(tmp_path):
    _images(tmp_path, "a.png")
    rows = []
    for g in range(50):
        for resp, scores in (("good", (5, 4)), ("bad", (1, 2)), ("meh", (3, 3))):
            rows += [("a.png", f"prompt {g}", resp, rater, s) for rater, s in zip(("Ana", "Ben"), scores)]
    csv_path = _write_csv(tmp_path / "r.csv", rows)
    first, report = build_pairs(csv_path, pairs="all", test_size=0.2, seed=0)
    _check_invariants(first, report)
    assert report["pairs"]["test_groups"] == 10 and len(first["test"]) == 30
    again, _ = build_pairs(csv_path, pairs="all", test_size=0.2, seed=0)
    other, _ = build_pairs(csv_path, pairs="all", test_size=0.2, seed=1)
    assert set(again["test"]["group"]) == set(first["test"]["group"])
    assert set(other["test"]["group"]) != set(first["test"]["group"])


def test_single_group_keeps_train_and_reports_empty_test(tmp_path):
    _images(tmp_path, "a.png")
    rows = [("a.png", "q", "good", "Ana", 5), ("a.png", "q", "good", "Ben", 4),
            ("a.png", "q", "bad", "Ana", 1), ("a.png", "q", "bad", "Ben", 2)]
    dataset_dict, report = build_pairs(_write_csv(tmp_path / "r.csv", rows), test_size=0.5)
    assert list(dataset_dict) == ["train"] and len(dataset_dict["train"]) == 1
    assert any("test split is empty" in w for w in report["warnings"])


# --- formats ---


def test_csv_jsonl_parquet_give_the_same_pairs(tmp_path):
    csv_path = _strategy_file(tmp_path)
    frame = pd.read_csv(csv_path)
    jsonl = tmp_path / "r.jsonl"
    lines = [json.dumps(rec, ensure_ascii=False) for rec in frame.to_dict("records")]
    jsonl.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n", encoding="utf-8")  # a stray blank line
    frame.to_parquet(tmp_path / "r.parquet", index=False)
    results = [build_pairs(p, pairs="all", test_size=0)[0]["train"] for p in (csv_path, jsonl, tmp_path / "r.parquet")]
    keys = [[(r["chosen"], r["rejected"], r["chosen_score"]) for r in ds] for ds in results]
    assert keys[0] == keys[1] == keys[2]
    # JSONL line numbers count the blank line
    bad = frame.copy()
    bad.loc[4, "score"] = None
    records = [json.dumps({k: (None if pd.isna(v) else v) for k, v in rec.items()}) for rec in bad.to_dict("records")]
    jsonl.write_text("\n".join(records[:3] + [""] + records[3:]) + "\n", encoding="utf-8")
    with pytest.raises(RatingsError, match=r"line 6: bad score"):
        build_pairs(jsonl, strict=True)


def test_csv_quoted_newlines_and_strict_line_numbers(tmp_path):
    _images(tmp_path, "a.png")
    text = (
        "image,prompt,response,rater,score\n"
        'a.png,"two\nline prompt",good,Ana,5\n'
        'a.png,"two\nline prompt",good,Ben,4\n'
        "\n"
        'a.png,"two\nline prompt",bad,Ana,1\n'
        'a.png,"two\nline prompt",bad,Ben,five\n'
    )
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    _, report = build_pairs(path, min_raters=1)
    assert report["dropped"]["bad score"] == 1
    assert report["dropped_examples"]["bad score"] == ["line 9: score 'five'"]  # the record starts on line 9
    assert len(_nonblank_lines(path)) == 9  # 4 records on 8 lines + header: counting lines would be wrong
    with pytest.raises(RatingsError, match=r"r\.csv line 9: bad score \(score 'five'\)"):
        build_pairs(path, strict=True)


# --- the messy file ---

MESSY_LINES = [
    "image, Prompt ,response,rater,score,notes",  # 1  header: odd spacing/case, an unknown column
    "",  # 2
    "a.png,Describe the chart,Three bars.,Aiko,5,good",  # 3
    "a.png,Describe the chart,Three bars.,Björn,4,",  # 4
    "a.png,Describe the chart,Three bars., Chloé , 5 ,",  # 5  spaces around cells
    "a.png,Describe the chart,I am not sure what this is.,Aiko,2,",  # 6
    "a.png,Describe the chart,I am not sure what this is.,Björn,1,",  # 7
    "a.png,Describe the chart,I am not sure what this is.,Chloé,2,",  # 8
    "a.png,Describe the chart,I am not sure what this is.,Björn,5,again",  # 9  duplicate rater x item
    "",  # 10
    "b.png,What colour?,Red.,Aiko,4,",  # 11 tie group
    "b.png,What colour?,Red.,Björn,4,",  # 12
    "b.png,What colour?,Blue.,Aiko,4,",  # 13
    "b.png,What colour?,Blue.,Björn,4,",  # 14
    "c.png,How many?,3,Aiko,7,",  # 15 out of scale
    "c.png,How many?,3,Björn,abc,",  # 16 bad score
    "c.png,How many?,3,Chloé,,",  # 17 bad score (empty)
    "c.png,How many?,4,Aiko,1,",  # 18 alone in group (its sibling has no valid rating)
    "c.png,How many?,4,Björn,2,",  # 19
    "missing.png,Describe,Something,Aiko,3,",  # 20 missing image
    ",Describe,Something,Björn,3,",  # 21 missing image (empty path)
    "broken.png,Describe,Something,Aiko,3,",  # 22 unreadable image
    "d.png,Describe,Only one rater,Eun-ji,5,",  # 23 too few raters
    "d.png,Describe,Two raters here,Aiko,3,",  # 24 alone in group
    "d.png,Describe,Two raters here,李雷,4,",  # 25
    "e.png,Which is best?,Short.,Aiko,5,",  # 26
    "e.png,Which is best?,Short.,李雷,4,",  # 27
    "e.png,Which is best?,A much longer answer.,Aiko,1,",  # 28
    "e.png,Which is best?,A much longer answer.,李雷,2,",  # 29
    "a.png,Describe the chart,Three bars.,,3,",  # 30 missing value (no rater)
    "   ",  # 31 whitespace-only line
    ",,,,,",  # 32 an all-empty spreadsheet row
    "a.png,Describe the chart,Three bars.,Dmitri,0,",  # 33 out of scale
    "",  # 34
]
MESSY_DROPPED = {
    "duplicate rater×item": 1,
    "out of scale": 2,
    "bad score": 2,
    "missing image": 2,
    "unreadable image": 1,
    "missing value": 1,
    "too few raters": 1,
    "alone in group": 4,
    "tie": 4,
}


def _messy(tmp_path, whitespace_line="   "):
    _images(tmp_path, "a.png", "b.png", "c.png", "d.png", "e.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    path = tmp_path / "messy.csv"
    lines = [whitespace_line if line == "   " else line for line in MESSY_LINES]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
    return path


# A whitespace-only line sends the file to pandas' parser, an empty one keeps it on Arrow's:
# both must read the same rows and name the same lines.
@pytest.mark.parametrize("whitespace_line", ["   ", ""])
def test_messy_file_is_fully_accounted_for(tmp_path, whitespace_line):
    out = tmp_path / "out"
    assert main(["--ratings", str(_messy(tmp_path, whitespace_line)), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["rows_read"] == 28 and report["rows_used"] == 10
    assert {k: v for k, v in report["dropped"].items() if v} == MESSY_DROPPED
    assert report["rows_read"] == report["rows_used"] + sum(report["dropped"].values())
    assert report["unknown_columns"] == {"count": 1, "names": ["notes"]}
    assert report["blank_rows_skipped"] == 1
    assert report["zero_variance_raters"] == ["Eun-ji"]
    assert {r["rater"] for r in report["raters"]} == {"Aiko", "Björn", "Chloé", "Eun-ji", "李雷"}
    examples = report["dropped_examples"]
    assert examples["out of scale"] == ["line 15: score '7'", "line 33: score '0'"]
    assert examples["duplicate rater×item"] == ["line 9: rater 'Björn' rated this item before"]
    assert examples["missing image"][0] == "line 20: image 'missing.png'"
    assert examples["unreadable image"] == ["line 22: image 'broken.png'"]
    assert examples["missing value"] == ["line 30: empty rater"]
    dataset_dict = datasets.load_from_disk(str(out))
    rows = _all_rows(dataset_dict)
    assert sorted(r["chosen"][0]["content"] for r in rows) == ["Short.", "Three bars."]
    _check_invariants(dataset_dict, report)
    # counting lines over the bytes agrees with the csv module's walk on every record
    lines = _nonblank_lines(tmp_path / "messy.csv")
    walked = _csv_record_lines(tmp_path / "messy.csv", 29, range(29))
    assert len(lines) == 29 + 1 and {r: int(lines[r + 1]) for r in range(29)} == walked
    assert walked[0] == 3 and walked[28] == 33
    page = (out / "report.md").read_text(encoding="utf-8")
    for problem in list(MESSY_DROPPED) + ["unknown columns", "notes", "line 15", "Eun-ji", "李雷"]:
        assert problem in page, problem


# --- bad input: one error line, exit 2, nothing written ---


def _refused(tmp_path, capsys, ratings, *extra):
    out = tmp_path / "out"
    code = run_command(main, ["--ratings", str(ratings), "--output", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    return err[0]


def test_missing_columns(tmp_path, capsys):
    path = _write_csv(tmp_path / "r.csv", [("a.png", "q", 3)], header=("image", "prompt", "score"))
    message = _refused(tmp_path, capsys, path)
    assert "r.csv" in message and "missing required column(s) rater" in message


def test_empty_and_header_only_files(tmp_path, capsys):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "empty.csv: the file is empty" in _refused(tmp_path, capsys, tmp_path / "empty.csv")
    (tmp_path / "head.csv").write_text("image,prompt,rater,score\n\n", encoding="utf-8")
    assert "head.csv: no rating rows" in _refused(tmp_path, capsys, tmp_path / "head.csv")
    assert "nope.csv: no such file" in _refused(tmp_path, capsys, tmp_path / "nope.csv")


def test_binary_garbage(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "junk.csv").write_bytes(bytes(rng.integers(0, 256, 4000, dtype=np.uint8)))
    assert "junk.csv" in _refused(tmp_path, capsys, tmp_path / "junk.csv")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not parquet at all")
    assert "junk.parquet: cannot read as Parquet" in _refused(tmp_path, capsys, tmp_path / "junk.parquet")


def test_rows_with_extra_cells(tmp_path, capsys):
    (tmp_path / "r.csv").write_text("image,prompt,rater,score\na.png,q,Ana,3\n\na.png,q,Ben,4,oops\n", encoding="utf-8")
    assert "r.csv line 4: 5 cells, the header has 4" in _refused(tmp_path, capsys, tmp_path / "r.csv")


def test_no_valid_rows(tmp_path, capsys):
    _images(tmp_path, "a.png")
    path = _write_csv(tmp_path / "r.csv", [("a.png", "q", "x", "Ana", "n/a"), ("a.png", "q", "y", "Ben", 9)])
    message = _refused(tmp_path, capsys, path)
    assert "no valid rating rows" in message and "1 bad score" in message and "1 out of scale" in message


def test_no_pairs(tmp_path, capsys):
    _images(tmp_path, "a.png")
    rows = [("a.png", "q", "x", "Ana", 3), ("a.png", "q", "x", "Ben", 4),
            ("a.png", "q", "y", "Ana", 3), ("a.png", "q", "y", "Ben", 4)]
    message = _refused(tmp_path, capsys, _write_csv(tmp_path / "r.csv", rows))
    assert "no preference pairs" in message and "4 tie" in message


def test_min_alpha_refusal(sample, tmp_path, capsys):
    csv_path, _, report = sample
    alpha = report["agreement"]["alpha_interval"]
    message = _refused(tmp_path, capsys, csv_path, "--min-alpha", str(round(alpha + 0.05, 2)))
    assert "below --min-alpha" in message and f"{alpha:.3f}" in message


def test_strict_names_the_first_bad_row(tmp_path, capsys):
    message = _refused(tmp_path, capsys, _messy(tmp_path), "--strict")
    assert message == "error: " + str(tmp_path / "messy.csv") + ": unknown column(s) notes (--strict)"
    _images(tmp_path, "a.png")
    rows = [("a.png", "q", "x", "Ana", 3), ("a.png", "q", "x", "Ben", 4),
            ("a.png", "q", "y", "Ana", 1), ("a.png", "q", "y", "Ben", 11)]
    message = _refused(tmp_path, capsys, _write_csv(tmp_path / "r.csv", rows), "--strict")
    assert message.endswith("r.csv line 5: out of scale (score '11'); --strict refuses any dropped row")


def test_bad_settings_are_errors(tmp_path, capsys):
    path = _strategy_file(tmp_path)
    assert "bad --scale" in _refused(tmp_path, capsys, path, "--scale", "5-1")
    with pytest.raises(RatingsError, match="length-match needs a response column"):
        build_pairs(_image_mode_file(tmp_path), length_match=0.5)


# --- command line round trip ---


def test_cli_round_trip_and_no_silent_overwrite(sample, tmp_path, capsys):
    csv_path, _, _ = sample
    out = tmp_path / "pairs"
    assert main(["--ratings", str(csv_path), "--output", str(out), "--pairs", "all", "--margin", "0.5"]) == 0
    capsys.readouterr()
    dataset_dict = datasets.load_from_disk(str(out))
    assert set(dataset_dict) == {"train", "test"}
    row = dataset_dict["train"][0]
    assert isinstance(row["images"], list) and isinstance(row["images"][0], Image.Image)
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert set(dataset_dict["train"].column_names) == {
        "images", "prompt", "chosen", "rejected", "group", "chosen_score", "rejected_score", "margin", "n_raters"
    }
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    _check_invariants(dataset_dict, report)
    assert min(r["margin"] for r in _all_rows(dataset_dict)) > 0.5
    page = (out / "report.md").read_text(encoding="utf-8")
    assert "![pair margins](margin_hist.png)" in page and "WARNING" in page
    assert (out / "margin_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert run_command(main, ["--ratings", str(csv_path), "--output", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["--ratings", str(csv_path), "--output", str(out), "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["pairs_strategy"] == "best-worst"


def test_save_pairs_refuses_non_empty_dir(sample, tmp_path):
    _, dataset_dict, report = sample
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        save_pairs(dataset_dict, report, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


# --- hostile files: other delimiters, images outside the folder, huge fields, a killed save ---


def _two_raters(image="a.png"):
    return [(image, "describe", answer, rater, score) for rater in ("r1", "r2") for answer, score in (("good", 5), ("bad", 1))]


@pytest.mark.parametrize("delimiter, name", [(";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")])
def test_another_delimiter_is_named(tmp_path, capsys, delimiter, name):
    _images(tmp_path, "a.png")
    lines = [delimiter.join(map(str, row)) for row in [("image", "prompt", "response", "rater", "score"), *_two_raters()]]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    message = _refused(tmp_path, capsys, tmp_path / "r.csv")
    assert f"separated by {name}, not commas" in message and "r.csv" in message


def test_images_outside_the_folder_need_a_flag(tmp_path, capsys):
    team = tmp_path / "team"
    team.mkdir()
    _images(tmp_path, "elsewhere/a.png")
    _images(team, "inside/b.png")
    (team / "linked").symlink_to(tmp_path / "elsewhere")  # a link the team made inside its folder: allowed
    rows = _two_raters("../elsewhere/a.png") + _two_raters("linked/a.png") + _two_raters("inside/../inside/b.png")
    path = _write_csv(team / "r.csv", rows)
    message = _refused(tmp_path, capsys, path)
    assert "line 2: image '../elsewhere/a.png' is outside the ratings file's folder" in message
    assert "--allow_outside_images" in message

    dataset_dict, report = build_pairs(path, test_size=0, allow_outside_images=True)
    assert report["rows_used"] == 12 and len(dataset_dict["train"]) == 3
    absolute = _write_csv(team / "abs.csv", _two_raters(str(tmp_path / "elsewhere" / "a.png")))
    with pytest.raises(RatingsError, match="is outside the ratings file's folder"):
        build_pairs(absolute)
    missing = _write_csv(team / "missing.csv", _two_raters("../nowhere.png") + _two_raters("inside/b.png"))
    assert build_pairs(missing, test_size=0)[1]["dropped"]["missing image"] == 4  # not there: dropped as before


def test_fields_over_the_csv_modules_limit_are_read(tmp_path):
    """A response longer than the csv module's 128 KiB field limit: the parsers read it, and naming the
    line of a dropped row (the csv module walks the file) works too."""
    import csv

    _images(tmp_path, "a.png")
    rows = _two_raters() + [("a.png", "describe", "x" * 300_000, "r3", "not a number")]
    path = _write_csv(tmp_path / "r.csv", rows)
    limit = csv.field_size_limit()
    dataset_dict, report = build_pairs(path, test_size=0)
    assert report["dropped"]["bad score"] == 1 and report["dropped_examples"]["bad score"][0].startswith("line 6:")
    assert csv.field_size_limit() == limit  # the module-wide limit is left as it was


def test_a_killed_save_leaves_staging_that_the_next_save_removes(sample, tmp_path):
    _, dataset_dict, report = sample
    stale = tmp_path / ".out.tmp-killed"  # what a SIGKILL mid-save leaves (no finally ran)
    (stale / "new").mkdir(parents=True)
    (stale / "new" / "half.arrow").write_bytes(b"\0" * 10)
    other = tmp_path / ".other.tmp-keep"
    other.mkdir()
    save_pairs(dataset_dict, report, tmp_path / "out")
    assert not stale.exists() and other.exists() and (tmp_path / "out" / "report.json").is_file()
