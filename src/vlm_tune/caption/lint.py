"""`vlm-tune caption-lint DIR`: QA of an existing caption set, plus what kohya sd-scripts or diffusers would trip on.

    report = lint_folder("data/ver5", trigger="ohwx")    # analyze_captions(...) of the set + "pitfalls"
    json_path, md_path = write_report(report, "data/ver5")

Reading the set and its format problems: `caption_set`; the analyses: `analysis`; the report files:
`qa_report` (`vlm-tune caption` writes the same report at the end of every run).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from vlm_tune.caption.analysis import MAX_WORDS, MIN_WORDS, analyze_captions
from vlm_tune.caption.caption_set import (
    LEVELS,
    METADATA,
    normalize_extension,
    problem,
    read_set,
    sort_problems,
)
from vlm_tune.caption.qa_report import write_report
from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError

TRAINER_EXTENSION = ".caption"  # kohya sd-scripts' default --caption_extension (its WD14 tagger writes .txt)


# --- lint ------------------------------------------------------------------------------------
def lint_folder(
    root: str | os.PathLike,
    caption_extension: str | None = None,
    caption_column: str = "text",
    trigger: str | None = None,
    trainer_extension: str = TRAINER_EXTENSION,
    *,
    top_k: int = 20,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> dict:
    """analyze_captions of an existing set plus `pitfalls`: what kohya sd-scripts or diffusers would trip on."""
    root = Path(root)
    read = read_set(root, caption_extension, caption_column)
    pitfalls = list(read["problems"])
    source, trainer_extension = read["source"], normalize_extension(trainer_extension) or TRAINER_EXTENSION
    if caption_extension is None and source not in (None, METADATA) and source != trainer_extension:
        pitfalls.append(problem(".", "warning", f"caption files are {source} but kohya's trainer default "
                                                f"--caption_extension is {trainer_extension}: pass --caption_extension "
                                                f"{source} to sd-scripts (its WD14 tagger writes .txt)"))
    pitfalls = sort_problems(pitfalls)
    counts = {
        "images": read["n_images"],
        "captioned": len(read["entries"]),
        "caption_source": source,
        "caption_files": read["ext_counts"],
        "metadata_rows": read["n_metadata_rows"],
        "orphan_caption_files": read["n_orphans"],
        "refused": read["n_refused"],
        "pitfalls": {level: sum(p["level"] == level for p in pitfalls) for level in LEVELS},
    }
    report = analyze_captions(read["entries"], trigger=trigger, counts=counts, top_k=top_k,
                              min_words=min_words, max_words=max_words)
    report["root"] = str(root)
    report["caption_source"] = source
    report["pitfalls"] = pitfalls
    return report


# --- command ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgParser(prog="vlm-tune caption-lint",
                  description="QA of an existing caption set (kohya sidecars or diffusers metadata.jsonl).")
    p.add_argument("dir", metavar="DIR", help="dataset root; images are found recursively")
    p.add_argument("--caption_extension", help="kohya sidecar extension to check, e.g. .txt (default: the one found); "
                                               "metadata.jsonl checks diffusers' layout")
    p.add_argument("--caption_column", default="text", help="caption column of metadata.jsonl (diffusers' --caption_column)")
    p.add_argument("--trigger", help="trigger word every caption must start with (as its own comma-separated token)")
    p.add_argument("--trainer_extension", default=TRAINER_EXTENSION,
                   help=f"the extension the trainer will read (default {TRAINER_EXTENSION}, kohya's default)")
    p.add_argument("--report_dir", help="where caption_report.json/.md go (default: DIR)")
    p.add_argument("--max_words", type=int, default=MAX_WORDS, help="flag captions longer than this")
    p.add_argument("--strict", action="store_true", help="exit 1 if any caption is suspicious or any pitfall "
                                                         "(not info) is found")
    return p.parse_args(argv)


def failing(report: dict) -> bool:
    """--strict fails on any suspicious caption or any pitfall above `info`."""
    return bool(report.get("suspicious")) or any(p["level"] != "info" for p in report.get("pitfalls", []))


def summary_lines(report: dict, md_path: Path, json_path: Path, limit: int = 8) -> list[str]:
    counts = report["counts"]
    length = report["length_words"]
    source = report.get("caption_source") or "none"
    lines = [(f"{report['root']}: {counts['images']} image(s), {counts['captioned']} captioned from {source}, "
              f"{report['n_captions']} caption(s); words p50 {length['p50']}, p95 {length['p95']}, "
              f"max {length['max']}")]
    kinds = Counter(s["kind"] for s in report["suspicious"])
    lines.append(f"  suspicious: {report['n_suspicious_files']} file(s)"
                 + (" — " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) if kinds else ""))
    if report.get("trigger"):
        lines.append(f"  trigger {report['trigger']['word']!r}: coverage {report['trigger']['coverage']}")
    levels = counts["pitfalls"]
    lines.append("  pitfalls: " + ", ".join(f"{levels[level]} {level}" for level in LEVELS))
    ranked = [p for level in LEVELS[:2] for p in report["pitfalls"] if p["level"] == level]
    shown = [f"    {p['level']:7} {p['file']}: {p['problem']}" for p in ranked]
    shown += [f"    caption {s['file']}: {s['reason']}" for s in report["suspicious"]]
    lines += shown[:limit] + ([f"    … and {len(shown) - limit} more in the report"] if len(shown) > limit else [])
    lines.append(f"report: {md_path} and {json_path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.dir)
    if not root.exists():
        raise UserError(f"caption-lint: folder not found: {args.dir}")
    if not root.is_dir():
        raise UserError(f"caption-lint: not a folder: {args.dir}")
    if args.max_words < 1:
        raise UserError("caption-lint: --max_words must be >= 1")
    report = lint_folder(root, args.caption_extension, args.caption_column, args.trigger, args.trainer_extension,
                         max_words=args.max_words)
    try:
        json_path, md_path = write_report(report, Path(args.report_dir) if args.report_dir else root,
                                          title=f"Caption QA report — {root}")
    except OSError as exc:
        raise UserError(f"caption-lint: cannot write the report to {args.report_dir or root}: {exc.strerror or exc}")
    print("\n".join(summary_lines(report, md_path, json_path)))
    return 1 if args.strict and failing(report) else 0
