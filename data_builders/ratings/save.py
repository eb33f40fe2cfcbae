"""What a build leaves on disk: the DatasetDict, report.json, report.md (the report as a page a team
reads) and margin_hist.png, written to a staging folder and renamed into place (all or nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before anything can pull in pyplot
import datasets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from data_builders._common import staged_replace
from data_builders.ratings.report import decimals
from data_builders.ratings.schema import ALPHA_RELIABLE, LOW_CORRELATION
from vlm_tune.core.markdown import md_escape, md_table

TOOL_NAMES = {"argilla": "an Argilla", "labelstudio": "a Label Studio"}

# --- report.md ---


def _summary_lines(report: dict) -> list[str]:
    lines = [
        "# Preference pairs from team ratings",
        "",
        f"- ratings file: `{report['ratings_file']}` ({report['format']}, {report['mode']} mode)",
    ]
    imported = report.get("import")
    if imported:
        skipped = "; skipped: " + ", ".join(f"{n} {why}" for why, n in imported["skipped"].items()) \
            if imported["skipped"] else ""
        lines.append(f"- imported from {TOOL_NAMES[imported['format']]} export: {imported['ratings']} ratings of "
                     f"{md_escape(repr(imported['question']))} in {imported['records']} records{skipped}")
    lines += [
        f"- scale: {report['scale']['low']:g}–{report['scale']['high']:g}"
        + (" (inferred from the scores)" if report["scale"]["inferred"] else ""),
        f"- scores: {report['score_units_explained']}",
        f"- pairs: {report['pairs_strategy']}, margin > {report['margin']:g}, min raters {report['min_raters']}"
        + (f", length match ≥ {report['length_match']:g}" if report["length_match"] else "")
        + (", both orders" if report["both_orders"] else ""),
        f"- **{report['pairs']['train']} train / {report['pairs']['test']} test pairs** "
        f"from {report['rows_used']} of {report['rows_read']} rows",
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", ""]
        alpha_i = report["agreement"]["alpha_interval"]
        if alpha_i is not None and alpha_i < ALPHA_RELIABLE:
            lines += [
                f"> **WARNING: the raters disagree.** Krippendorff's α (interval) = {alpha_i:.3f} is below "
                f"{ALPHA_RELIABLE}, the lowest value for tentative conclusions. The pairs below follow a consensus "
                "the team does not share; agree on a rating guide and re-rate, or drop the raters flagged below.",
                "",
            ]
        lines += [f"- {w}" for w in report["warnings"] if not w.startswith("low agreement")] + [""]
    return lines


def _rows_lines(report: dict) -> list[str]:
    rows = [["used", report["rows_used"], "the row's item is in at least one pair", ""]]
    for name, count in report["dropped"].items():
        if count:
            shown = "<br>".join(md_escape(e) for e in report["dropped_examples"].get(name, []))
            rows.append([name, count, report["reasons_explained"][name], shown])
    rows.append(["**read**", f"**{report['rows_read']}**", "used + dropped", ""])
    lines = ["## Rows", "", *md_table(["bucket", "rows", "meaning", "examples"], rows, ["l", "r", "l", "l"], escape=False)]
    notes = []
    if report["unknown_columns"]["count"]:
        notes.append(
            f"unknown columns ({report['unknown_columns']['count']}): "
            + ", ".join(f"`{n}`" for n in report["unknown_columns"]["names"])
            + " — ignored, rows kept"
        )
    if report["blank_rows_skipped"]:
        notes.append(f"{report['blank_rows_skipped']} row(s) with every cell empty skipped (not counted as rows)")
    return lines + [""] + [f"Note: {n}." for n in notes] + ([""] if notes else [])


def _agreement_lines(report: dict) -> list[str]:
    a = report["agreement"]
    alphas = [
        ["interval", decimals(a["alpha_interval"])],
        ["ordinal", decimals(a["alpha_ordinal"])],
        ["interval, on per-rater z-scores", decimals(a["alpha_interval_zscored"])],
    ]
    lines = ["## Agreement", "", *md_table(["Krippendorff's α", "value"], alphas, ["l", "r"], escape=False), ""]
    lines += [
        f"On {a['scores']}: {a['alpha_items_used']} items rated by two or more raters "
        f"({a['alpha_ratings_used']} ratings). α ≥ 0.8 is reliable, ≥ {ALPHA_RELIABLE} tentative."
        + (f" {a['alpha_note']}." if a["alpha_note"] else "")
        + " The z-scored α leaves out each rater's leniency and spread: when it is much higher than the"
        " raw α, the team ranks alike but uses the scale differently (z-scoring, on by default, handles that).",
        "",
        f"Computed with: {a['alpha_method']}." if a["alpha_method"] else "",
        "",
    ]
    rows = []
    for r in report["raters"]:
        flags = ["**disagrees with everyone**"] if r["disagrees_with_everyone"] else []
        flags += ["same score for everything"] if r["zero_variance"] else []
        rows.append([md_escape(r["rater"]), r["count"], f"{r['mean']:.2f}", f"{r['sd']:.2f}", decimals(r["loo_r"], 2),
                     r["shared_items"], ", ".join(flags)])
    header = ["rater", "ratings", "mean", "sd", "r with others", "shared items", "flag"]
    lines += ["## Raters", "", *md_table(header, rows, ["l", "r", "r", "r", "r", "r", "l"], escape=False)]
    return lines + ["", f"r with others: {report['rater_correlation']}; flagged below {LOW_CORRELATION}.", ""]


def _pairs_lines(report: dict, hist_name: str) -> list[str]:
    p, m = report["pairs"], report["margin_stats"]
    splits = [["train", p["train"], p["train_groups"]], ["test", p["test"], p["test_groups"]]]
    lines = [
        "## Pairs",
        "",
        *md_table(["split", "pairs", "groups"], splits, ["l", "r", "r"]),
        "",
        f"{p['candidates']} candidate pairs from the {report['pairs_strategy']} strategy, {p['removed_as_ties']} "
        f"removed as ties (difference ≤ margin), {p['removed_by_length_match']} by length matching; split by group "
        f"(seed {report['split']['seed']}, test size {report['split']['test_size']:g}).",
        "",
        f"Margin (chosen − rejected, {m['units']} units): min {m['min']:.3f}, median {m['median']:.3f}, "
        f"mean {m['mean']:.3f}, max {m['max']:.3f}.",
        "",
        f"![pair margins]({hist_name})",
        "",
    ]
    if report["position_balance"]:
        rows = [[split, b["better_first"], b["better_second"]] for split, b in report["position_balance"].items()]
        lines += [*md_table(["split", "better image first", "better image second"], rows, ["l", "r", "r"]), ""]
    return lines


def render_report_md(report: dict, hist_name: str = "margin_hist.png") -> str:
    """report.json as a human-readable page."""
    return "\n".join(_summary_lines(report) + _rows_lines(report) + _agreement_lines(report)
                     + _pairs_lines(report, hist_name))


# --- files ---


def _margin_histogram(margins: np.ndarray, units: str, target: Path) -> None:
    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(margins, bins=min(30, max(5, len(margins) // 5)), color="#1f5fd6", edgecolor="white")
    ax.set_xlabel(f"chosen − rejected mean score ({units})")
    ax.set_ylabel("pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Pair margins (n = {len(margins)})")
    fig.tight_layout()
    fig.savefig(target)


def save_pairs(dataset_dict: datasets.DatasetDict, report: dict, output_dir, overwrite: bool = False) -> Path:
    """Dataset + report.json + report.md + margin_hist.png, built in a staging dir then renamed.

    An interrupted run leaves output_dir as it was; an existing non-empty output_dir is only
    replaced with overwrite=True (FileExistsError otherwise).
    """

    def write(target: Path) -> None:
        dataset_dict.save_to_disk(str(target))
        margins = np.concatenate([np.asarray(ds["margin"], dtype=np.float64) for ds in dataset_dict.values()])
        _margin_histogram(margins, report["margin_stats"]["units"], target / "margin_hist.png")
        (target / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (target / "report.md").write_text(render_report_md(report), encoding="utf-8")

    return staged_replace(Path(output_dir), overwrite, write)
