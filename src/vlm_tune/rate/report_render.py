"""The rating report as files: report.md (thumbnails beside it in thumbs/) and a self-contained report.html
(thumbnails inlined as data URIs, so the one file can be mailed or attached to an issue).
Every text from the task file or a rater's name is escaped (Markdown cells with md_escape, HTML with
html.escape)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vlm_tune.core.images import open_image
from vlm_tune.core.io import atomic_write_bytes, atomic_write_text
from vlm_tune.core.markdown import fmt, md_escape, md_table
from vlm_tune.rate.report import GroupRank, ImageScore

THUMB_PX = 160
CSS = """body{font:15px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1100px;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem}th,td{border-bottom:1px solid #d9dde5;padding:.3rem .6rem;
text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}.strip{display:flex;
gap:.4rem;flex-wrap:wrap;align-items:flex-end}.strip figure{margin:0;font-size:.8rem;color:#5e6675;text-align:center}
.strip img{display:block;border:1px solid #d9dde5}.worst img{border-color:#b42318}.flag{color:#b42318}"""


def thumbnail(score: ImageScore) -> bytes | None:
    image, _ = open_image(score.item.image_path)
    if image is None:
        return None
    image.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


def _interval(group: GroupRank) -> str:
    return "–" if group.low is None else f"[{group.low:+.2f}, {group.high:+.2f}]"


def _alpha_lines(report: dict) -> tuple[list[str], list[list]]:
    agree = report["agreement"]
    header = ["rater", "ratings", "mean", "sd", "r with the others", "flag"]
    rows = [[r["rater"], r["count"], fmt(r["mean"]), fmt(r["sd"]), fmt(r["loo_r"]),
             "disagrees with everyone" if r["disagrees_with_everyone"] else ""] for r in agree.get("raters", [])]
    summary = [f"- Krippendorff's α (interval): raw **{fmt(agree.get('alpha_raw'))}**, after per-rater z-scores "
               f"**{fmt(agree.get('alpha_z'))}**" + (f" ({md_escape(agree['note'])})" if agree.get("note") else "")]
    return summary, [header] + rows


# --- Markdown ---


def _group_table(groups: list[GroupRank]) -> list[str]:
    rows = [[k + 1, g.group, len(g.images), g.n_ratings, f"{g.mean_z:+.2f}", _interval(g), f"{g.mean_raw:.2f}"]
            for k, g in enumerate(groups)]
    return md_table(["rank", "group", "images", "ratings", "mean z", "95 % interval", "mean score"], rows,
                    align=["r", "l", "r", "r", "r", "r", "r"])


def render_markdown(report: dict, thumbs: dict[str, str]) -> str:
    """thumbs: item_id -> path of its thumbnail relative to report.md."""
    lines = ["# Team rating report", "",
             f"- Database: `{report['database']}` ({report['mode']} mode)",
             f"- Items: {report['items_rated']} of {report['items']} rated; {report['ratings']} ratings"
             + (f"; {report['removed_items']} item(s) removed from the task file" if report["removed_items"] else "")]
    summary, table = _alpha_lines(report)
    lines += summary + [""]
    if report["groups"]:
        lines += ["## Groups, best first", "",
                  "Mean over a group's images of each image's mean per-rater z-score; 95 % Student-t interval "
                  "over images.", ""]
        lines += _group_table(report["groups"]) + [""]
        lines += ["## Best and worst images per group", ""]
        for group in report["groups"]:
            cells = [(f"![]({thumbs[s.item.item_id]})" if s.item.item_id in thumbs else md_escape(s.item.image))
                     + f"<br>{s.mean_z:+.2f}" for s in group.best() + group.worst()]
            header = [f"best {k + 1}" for k in range(len(group.best()))] + \
                     [f"worst {len(group.worst()) - k}" for k in range(len(group.worst()))]
            lines += [f"### {md_escape(group.group)}", ""] + md_table(header, [cells], escape=False) + [""]
    lines += ["## Raters", ""] + md_table(table[0], table[1:], align=["l", "r", "r", "r", "r", "l"]) + [""]
    return "\n".join(lines)


# --- HTML ---


def _html_table(header: list[str], rows: list[list], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{html.escape(str(c))}</td>" if k in numeric
                                    else f"<td>{html.escape(str(c))}</td>" for k, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_strip(group: GroupRank, thumbs: dict[str, bytes]) -> str:
    figures = []
    for kind, scores in (("best", group.best()), ("worst", group.worst())):
        for score in scores:
            data = thumbs.get(score.item.item_id)
            img = (f'<img alt="{html.escape(score.item.image)}" src="data:image/jpeg;base64,'
                   f'{base64.b64encode(data).decode("ascii")}">' if data else html.escape(score.item.image))
            figures.append(f'<figure class="{kind}">{img}<figcaption>{kind} · z {score.mean_z:+.2f}</figcaption></figure>')
    return f'<h3>{html.escape(group.group)}</h3><div class="strip">{"".join(figures)}</div>'


def render_html(report: dict, thumbs: dict[str, bytes]) -> str:
    agree = report["agreement"]
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Team rating report</title>"
             f"<style>{CSS}</style></head><body><h1>Team rating report</h1>",
             f"<p>{html.escape(report['database'])} ({report['mode']} mode): {report['items_rated']} of "
             f"{report['items']} items rated, {report['ratings']} ratings.</p>",
             f"<p>Krippendorff's α (interval): raw <b>{fmt(agree.get('alpha_raw'))}</b>, after per-rater z-scores "
             f"<b>{fmt(agree.get('alpha_z'))}</b> {html.escape(agree.get('note') or '')}</p>"]
    if report["groups"]:
        rows = [[k + 1, g.group, len(g.images), g.n_ratings, f"{g.mean_z:+.2f}", _interval(g), f"{g.mean_raw:.2f}"]
                for k, g in enumerate(report["groups"])]
        parts += ["<h2>Groups, best first</h2>",
                  _html_table(["rank", "group", "images", "ratings", "mean z", "95 % interval", "mean score"], rows,
                              {0, 2, 3, 4, 5, 6}),
                  "<h2>Best and worst images per group</h2>"]
        parts += [_html_strip(group, thumbs) for group in report["groups"]]
    _, table = _alpha_lines(report)
    parts += ["<h2>Raters</h2>", _html_table(table[0], table[1:], {1, 2, 3, 4}), "</body></html>"]
    return "\n".join(parts)


def write_report(report: dict, output_dir) -> tuple[Path, Path]:
    """report.md + thumbs/ + report.html in output_dir (each file written atomically)."""
    output_dir = Path(output_dir)
    thumbs: dict[str, bytes] = {}
    for group in report["groups"]:
        for score in group.best() + group.worst():
            data = thumbnail(score)
            if data:
                thumbs[score.item.item_id] = data
    for item_id, data in thumbs.items():
        atomic_write_bytes(output_dir / "thumbs" / f"{item_id}.jpg", data)
    markdown = output_dir / "report.md"
    atomic_write_text(markdown, render_markdown(report, {i: f"thumbs/{i}.jpg" for i in thumbs}))
    page = output_dir / "report.html"
    atomic_write_text(page, render_html(report, thumbs))
    return markdown, page
