"""team_agreement: the one agreement function the team-rating app and the ratings builder share."""

import krippendorff
import numpy as np
import pandas as pd
import pytest

from data_builders.ratings import RatingsError, build_pairs, team_agreement
from data_builders.sample_ratings import make_sample_ratings
from vlm_tune.core.errors import UserError


def test_same_numbers_as_the_builders_report(tmp_path):
    csv_path = make_sample_ratings(tmp_path / "sample", seed=0, n_charts=20, n_raters=5)
    _, report = build_pairs(csv_path)
    frame = pd.read_csv(csv_path)
    items = (frame["image"] + "|" + frame["prompt"] + "|" + frame["response"]).tolist()
    result = team_agreement(items, frame["rater"].tolist(), frame["score"].tolist())
    # every sample row is valid, so the builder rated exactly these ratings
    assert result["alpha_raw"] == report["agreement"]["alpha_interval"]
    assert result["alpha_z"] == report["agreement"]["alpha_interval_zscored"]
    assert result["alpha_ordinal"] == report["agreement"]["alpha_ordinal"]
    assert result["raters"] == report["raters"]
    assert (result["n_items"], result["n_raters"], result["n_ratings"]) == (frame[["image", "prompt", "response"]]
                                                                            .drop_duplicates().shape[0], 5, len(frame))
    flagged = [r["rater"] for r in result["raters"] if r["disagrees_with_everyone"]]
    assert flagged == ["Eun-ji"]
    for row in result["raters"]:
        assert {"rater", "count", "mean", "sd", "loo_r", "disagrees_with_everyone"} <= set(row)


def test_alpha_matches_the_krippendorff_package_and_zscores():
    rng = np.random.default_rng(1)
    items, raters, scores = [], [], []
    for item in range(30):
        quality = rng.integers(1, 6)
        for rater, bias in (("P", 0), ("Q", 1), ("R", -1)):
            if rng.random() < 0.8:
                items.append(f"item {item}")
                raters.append(rater)
                scores.append(float(np.clip(quality + bias + rng.integers(-1, 2), 1, 7)))
    result = team_agreement(items, raters, scores)
    frame = pd.DataFrame({"item": items, "rater": raters, "score": scores})
    matrix = frame.pivot(index="rater", columns="item", values="score").to_numpy(dtype=float)
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="interval")
    assert result["alpha_raw"] == pytest.approx(expected, abs=1e-12)
    z = frame.groupby("rater")["score"].transform(lambda s: (s - s.mean()) / s.std(ddof=0))
    z_matrix = frame.assign(score=z).pivot(index="rater", columns="item", values="score").to_numpy(dtype=float)
    assert result["alpha_z"] == pytest.approx(
        krippendorff.alpha(reliability_data=z_matrix, level_of_measurement="interval"), abs=1e-10)
    assert result["alpha_z"] > result["alpha_raw"]  # leniency removed


def test_duplicates_empty_input_and_bad_input():
    once = team_agreement(["a", "a", "b", "b"], ["P", "Q", "P", "Q"], [5, 4, 1, 2])
    twice = team_agreement(["a", "a", "b", "b", "a"], ["P", "Q", "P", "Q", "P"], [5, 4, 1, 2, 1])
    assert twice["duplicates_ignored"] == 1 and twice["n_ratings"] == 4
    assert {k: v for k, v in twice.items() if k != "duplicates_ignored"} == \
        {k: v for k, v in once.items() if k != "duplicates_ignored"}
    empty = team_agreement([], [], [])
    assert empty["alpha_raw"] is None and empty["alpha_z"] is None and empty["raters"] == []
    lonely = team_agreement(["a", "b"], ["P", "P"], [3, 4])
    assert lonely["alpha_raw"] is None and "no item was rated by two raters" in lonely["alpha_note"]
    with pytest.raises(RatingsError, match="differ in length"):
        team_agreement(["a"], ["P", "Q"], [1, 2])
    with pytest.raises(UserError, match=r"score 1 \(nan\) is not a finite number"):
        team_agreement(["a", "a"], ["P", "Q"], [1, float("nan")])
    with pytest.raises(RatingsError, match=r"score 0 \('good'\) is not a number"):
        team_agreement(["a"], ["P"], ["good"])
