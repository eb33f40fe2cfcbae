"""What `make loop` measures, text only, after its commands ran: held-out preference accuracy (from the DPO
run), the simulated team's mean score and the attribute recall of the greedy captions of held-out scenes
before and after DPO, the team's agreement and the pair counts. Writes RUN_DIR/loop_summary.json,
DPO_RUN/captions_before_after.jsonl (the run report shows it) and prints a small table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_builders.scenes import read_diffusers_captions, read_truth, score_scenes
from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.markdown import md_table
from vlm_tune.report.sections import BEFORE_AFTER
from vlm_tune.runs.simulated_team import TEAM, rate, taste_features, team_score

# The goals of the loop (docs/benchmarks.md, "Loop").
GOAL_PREF_ACCURACY = 80.0  # % of held-out pairs ranked like the team
GOAL_RECALL_DROP = 2.0  # points of attribute recall DPO may lose at most


# --- held-out captions -----------------------------------------------------------------------
def greedy_captions(folder: Path) -> dict[str, str]:
    """file_name -> the caption `vlm-tune caption` wrote into folder/images/metadata.jsonl."""
    return {name: texts[0] for name, texts in read_diffusers_captions(folder / "images").items() if texts}


def caption_stats(captions: dict[str, str], truths: dict[str, dict]) -> dict:
    """Recall / precision (%), team score and the share of each thing the team looks at."""
    scores = score_scenes({k: [v] for k, v in captions.items()}, truths)["combined"]
    features = [taste_features(captions[k], truths[k]) for k in captions]
    n = max(1, len(features))
    return {
        "recall": 100 * (scores["recall"] or 0.0),
        "precision": 100 * (scores["precision"] or 0.0),
        "team_score": team_score(captions, truths),
        "per_rater": {r.name: sum(rate(r, captions[k], truths[k], k) for k in captions) / n for r in TEAM},
        "style_last_pct": 100 * sum(f["style_last"] for f in features) / n,
        "filler_pct": 100 * sum(f["filler"] for f in features) / n,
        "mean_chars": sum(f["chars"] for f in features) / n,
    }


def write_before_after(paths, before: dict[str, str], after: dict[str, str], truths: dict[str, dict]) -> Path:
    """DPO_RUN/captions_before_after.jsonl: per held-out image (path relative to the DPO run folder), the
    caption before and after DPO and the team's mean score of each."""
    rows = []
    for name in sorted(before.keys() & after.keys()):
        image = Path(os.path.relpath(paths.before / "images" / name, paths.dpo)).as_posix()
        rows.append({"image": image, "file_name": name, "before": before[name], "after": after[name],
                     "team_before": team_score({name: before[name]}, {name: truths[name]}),
                     "team_after": team_score({name: after[name]}, {name: truths[name]})})
    out = paths.dpo / BEFORE_AFTER
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


# --- summary ---------------------------------------------------------------------------------
def _pref_accuracy(dpo_dir: Path) -> tuple[float | None, float | None, int]:
    path = dpo_dir / "preference_eval.json"
    if not path.is_file():
        return None, None, 0
    found = json.loads(path.read_text(encoding="utf-8"))
    return (100 * found["before"]["preference_accuracy"], 100 * found["after"]["preference_accuracy"],
            found["after"]["n"])


def summarize(args, paths, progress: dict, pairs_report: dict, clock: dict) -> dict:
    truths = read_truth(paths.before / "truth.jsonl")
    before, after = greedy_captions(paths.before), greedy_captions(paths.after)
    shared = sorted(before.keys() & after.keys())
    truths = {k: truths[k] for k in shared}
    stats_before = caption_stats({k: before[k] for k in shared}, truths)
    stats_after = caption_stats({k: after[k] for k in shared}, truths)
    pref_before, pref_after, test_pairs = _pref_accuracy(paths.dpo)
    agreement = pairs_report.get("agreement", {})
    summary = {
        "pref_accuracy_before": pref_before, "pref_accuracy_after": pref_after,
        "team_score_before": stats_before["team_score"], "team_score_after": stats_after["team_score"],
        "recall_before": stats_before["recall"], "recall_after": stats_after["recall"],
        "alpha": {"interval": agreement.get("alpha_interval"), "ordinal": agreement.get("alpha_ordinal"),
                  "interval_zscored": agreement.get("alpha_interval_zscored")},
        "flagged_raters": [r["rater"] for r in progress.get("raters", []) if r.get("flagged")],
        "pairs": {"train": pairs_report.get("pairs", {}).get("train"), "test": pairs_report.get("pairs", {}).get("test"),
                  "test_scored": test_pairs},
        "rated_images": progress.get("items"), "ratings": (progress.get("alpha") or {}).get("n_ratings"),
        "heldout_images": len(shared), "changed_captions": sum(before[k] != after[k] for k in shared),
        "before": stats_before, "after": stats_after, "seconds": clock,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    summary["goals"] = {
        "pref_accuracy_at_least_80": pref_after is not None and pref_after >= GOAL_PREF_ACCURACY,
        "team_score_up": summary["team_score_after"] > summary["team_score_before"],
        "recall_within_2_points": summary["recall_after"] >= summary["recall_before"] - GOAL_RECALL_DROP,
    }
    return summary


def table(summary: dict) -> str:
    def num(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [
        ["preference accuracy, held-out pairs (%)", num(summary["pref_accuracy_before"]),
         num(summary["pref_accuracy_after"]), f"≥ {GOAL_PREF_ACCURACY:.0f}"],
        ["team score of held-out greedy captions (1–5)", num(summary["team_score_before"], 2),
         num(summary["team_score_after"], 2), "clearly up"],
        ["attribute recall, held-out (%)", num(summary["recall_before"]), num(summary["recall_after"]),
         f"≥ before − {GOAL_RECALL_DROP:.0f}"],
        ["captions naming the style last (%)", num(summary["before"]["style_last_pct"]),
         num(summary["after"]["style_last_pct"]), "(the team's taste)"],
    ]
    alpha, pairs = summary["alpha"], summary["pairs"]
    lines = md_table(["measure", "before DPO", "after DPO", "goal"], rows)
    flagged = ", ".join(summary["flagged_raters"]) or "none"
    lines += ["", f"team: α interval {num(alpha['interval'], 2)} (after z-scores {num(alpha['interval_zscored'], 2)}); "
              f"flagged raters: {flagged}; pairs train {pairs['train']} / test {pairs['test']}; "
              f"{summary['heldout_images']} held-out images, {summary['changed_captions']} captions changed; "
              f"{summary['seconds'].get('total', 0):.0f} s"]
    missed = [name for name, met in summary["goals"].items() if not met]
    lines.append("goals: all met" if not missed else f"goals missed: {', '.join(missed)}")
    return "\n".join(lines)


def finish(args, paths, progress: dict, pairs_report: dict, clock: dict) -> dict:
    """Measure, write loop_summary.json and the before/after captions, print the table."""
    summary = summarize(args, paths, progress, pairs_report, clock)
    write_before_after(paths, greedy_captions(paths.before), greedy_captions(paths.after),
                       read_truth(paths.before / "truth.jsonl"))
    atomic_write_text(paths.summary, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print("\n" + table(summary) + f"\n\nwrote {paths.summary} and {paths.dpo / BEFORE_AFTER}")
    return summary
