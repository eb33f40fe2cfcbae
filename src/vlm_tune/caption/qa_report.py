"""The caption QA report on disk: caption_report.json (everything) and caption_report.md (for people).

    json_path, md_path = write_report(analyze_captions(entries, trigger="ohwx"), out_dir)

`vlm-tune caption` writes it at the end of every run (`write_qa_report`: the set with the run's
counts), `vlm-tune caption-lint` for any caption set (plus its format pitfalls).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlm_tune.caption.analysis import analyze_captions, json_safe
from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.markdown import md_escape, md_table

REPORT_JSON = "caption_report.json"
REPORT_MD = "caption_report.md"


# --- sections --------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return md_table(header, rows) + [""]


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "—"
    return "—" if value is None else str(value)


def _counts_section(report: dict) -> list[str]:
    counts = report.get("counts") or {}
    summary = [["images analysed", report.get("n_images")], ["captions", report.get("n_captions")],
               ["files with suspicious captions", report.get("n_suspicious_files")],
               ["unique captions (ratio)", (report.get("duplicates") or {}).get("unique_ratio")]]
    if report.get("trigger"):
        trig = report["trigger"]
        summary.append([f"trigger {trig['word']!r} coverage", trig["coverage"]])
    if "pitfalls" in report:
        summary.append(["format pitfalls", len(report["pitfalls"])])
    summary += [[key, _scalar(value)] for key, value in counts.items() if not isinstance(value, list)]
    out = ["## Counts", ""] + _table(["what", "value"], summary)
    for key, value in counts.items():  # lists of files from the run (failed_files, notes)
        if isinstance(value, list) and value:
            rows = [[item.get("file", ""), item.get("reason", item.get("problem", ""))] if isinstance(item, dict)
                    else [item, ""] for item in value]
            out += [f"### {md_escape(key)}", ""] + _table(["file", "reason"], rows)
    return out


def _length_section(report: dict) -> list[str]:
    length = report.get("length_words") or {}
    out = ["## Caption length (words)", ""]
    out += _table(["min", "p50", "p95", "max", "mean"],
                  [[_scalar(length.get(k)) for k in ("min", "p50", "p95", "max", "mean")]])
    hist = length.get("histogram") or []
    top = max([b["count"] for b in hist] + [1])
    out += _table(["words", "captions", ""], [[b["words"], b["count"], "█" * round(20 * b["count"] / top)] for b in hist])
    kinds = report.get("caption_kinds") or {}
    return out + [f"Sentences: {kinds.get('sentence', 0)}, tag lines: {kinds.get('tags', 0)}.", ""]


def _trigger_section(report: dict) -> list[str]:
    trig = report.get("trigger")
    if not trig:
        return []
    out = ["## Trigger", "", (f"{trig['n_with_trigger']} of {report['n_images']} images start every caption "
                              f"with `{trig['word']}` as the first comma-separated token "
                              f"(coverage {trig['coverage']})."), ""]
    if trig["missing"]:
        out += _table(["missing the trigger"], [[f] for f in trig["missing"]])
    return out


def _sameness_section(report: dict) -> list[str]:
    dup = report.get("duplicates") or {}
    out = ["## Sameness", "", (f"Unique-caption ratio: {dup.get('unique_ratio')}; "
                               f"{dup.get('n_files', 0)} file(s) share a caption with another."), ""]
    if dup.get("groups"):
        rows = [[len(g["files"]), g["caption"], ", ".join(g["files"][:20]) + (f" … and {len(g['files']) - 20} more"
                                                                              if len(g["files"]) > 20 else "")]
                for g in dup["groups"]]
        out += _table(["files", "caption", "which"], rows)
    if report.get("top_openings"):
        out += ["Most common sentence openings:", ""] + _table(["opening", "count"],
                                                              [[o["opening"], o["count"]] for o in report["top_openings"]])
    if report.get("top_words"):
        out += ["## Top words", ""] + _table(["word", "count"], [[w["word"], w["count"]] for w in report["top_words"]])
    if report.get("top_tags"):
        out += ["## Top tags", ""] + _table(["tag", "count"], [[t["tag"], t["count"]] for t in report["top_tags"]])
    return out


def _flagged_section(report: dict) -> list[str]:
    suspicious = report.get("suspicious") or []
    out = ["## Suspicious captions", ""]
    out += _table(["file", "reason", "caption"], [[s["file"], s["reason"], s.get("caption", "")] for s in suspicious]) \
        if suspicious else ["None.", ""]
    if "pitfalls" in report:
        pitfalls = report["pitfalls"]
        out += ["## Format pitfalls (kohya sd-scripts / diffusers)", ""]
        out += _table(["file", "level", "problem"], [[p["file"], p.get("level", ""), p["problem"]] for p in pitfalls]) \
            if pitfalls else ["None.", ""]
    return out


# --- report ----------------------------------------------------------------------------------
def render_markdown(report: dict, title: str = "Caption QA report") -> str:
    """The human-readable report: counts, lengths, sameness, top words/tags, every flagged file."""
    out = [f"# {md_escape(title)}", ""]
    for section in (_counts_section, _length_section, _trigger_section, _sameness_section, _flagged_section):
        out += section(report)
    return "\n".join(out).rstrip() + "\n"


def write_report(report: dict, out_dir: str | os.PathLike, title: str = "Caption QA report") -> tuple[Path, Path]:
    """caption_report.json (everything) and caption_report.md (for people), each written atomically."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    atomic_write_text(json_path, json.dumps(json_safe(report), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, render_markdown(report, title))
    return json_path, md_path


# --- the report of a `vlm-tune caption` run -------------------------------------------------
def write_qa_report(args, folder) -> tuple[dict, Path, Path]:
    """The QA report of the whole caption set (kept + new) with this run's counts."""
    written, seconds = folder.written, folder.seconds
    counts = {
        "images": len(folder.images), "written": len(written), "skipped_existing": len(folder.skipped),
        "filled_other_format": folder.filled, "failed": len(folder.failed),
        "left_for_a_later_run": folder.left_for_later,
        "seconds": round(seconds, 2), "images_per_second": round(len(written) / seconds, 3) if written else None,
        "failed_files": sorted(folder.failed, key=lambda f: f["file"]), "notes": folder.problems,
        "format": args.format, "mode": args.mode, "caption_extension": args.caption_extension if folder.kohya else None,
    }
    entries = [{"file": rel, "captions": folder.existing[rel]} for rel in folder.images if rel in folder.existing]
    report = analyze_captions(entries, trigger=args.trigger, counts=counts)
    json_path, md_path = write_report(report, Path(args.report_dir or folder.root),
                                      title=f"Caption QA report — {folder.root}")
    return report, json_path, md_path


def print_summary(folder, report: dict, json_path: Path, md_path: Path) -> None:
    written, seconds = folder.written, folder.seconds
    print(f"written {len(written)}, kept {len(folder.skipped)}, failed {len(folder.failed)}"
          + (f", {len(written) / seconds:.2f} img/s" if written else ""))
    for item in folder.failed:
        print(f"  skipped {item['file']}: {item['reason']}")
    suspicious = report.get("suspicious", [])
    if suspicious:
        print(f"  {len(suspicious)} suspicious caption(s) listed in {md_path}")
    print(f"report: {md_path} and {json_path}")
