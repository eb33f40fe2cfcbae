"""One page built once and written twice: self-contained HTML (inline CSS, images as data URIs) and
Markdown (images linked relative to the page). Used by the run report and by `vlm-tune compare`."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from vlm_tune.core.io import atomic_write_text
from vlm_tune.core.markdown import fmt, md_escape, md_table
from vlm_tune.core.secrets import scrub_text


# --- special cells ---------------------------------------------------------------------------
@dataclass
class Img:
    """An image cell or block: embedded in HTML, linked (relative) in Markdown."""

    path: Path
    alt: str = ""
    width: int | None = None


@dataclass
class Mark:
    """A prediction cell coloured by correctness (an untrained model's 32-token babble is cut short)."""

    text: str
    correct: float | None
    max_chars: int = 80

    def __post_init__(self):
        if len(self.text) > self.max_chars:
            self.text = self.text[: self.max_chars - 1] + "…"


def _is_number(cell) -> bool:
    return isinstance(cell, (int, float)) and not isinstance(cell, bool)


def data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


# --- the page --------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .55rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.ok{background:#e6f4ea}td.bad{background:#fce8e6}.muted{color:#666;font-size:.9rem}
code{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px;font-size:.85rem}
img.plot{max-width:100%;border:1px solid #eee}details{margin:.5rem 0}.plots{display:flex;flex-wrap:wrap;gap:.6rem}
.plots img{width:560px;max-width:100%}td:first-child{white-space:nowrap}
"""


class Page:
    """Collects a report once and renders it as self-contained HTML and as Markdown."""

    def __init__(self, title: str, md_dir: Path):
        self.title, self.md_dir = title, md_dir
        self.html: list[str] = []
        self.md: list[str] = [f"# {title}", ""]

    def heading(self, text: str) -> None:
        self.html.append(f"<h2>{html.escape(text)}</h2>")
        self.md += [f"## {text}", ""]

    def text(self, text: str, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")
        self.md += [text, ""]

    def code(self, text: str) -> None:
        self.html.append(f"<p><code>{html.escape(text)}</code></p>")
        self.md += [f"`{text}`", ""]

    def images(self, images: list[Img]) -> None:
        self.html.append('<div class="plots">' + "".join(self._img_html(i, "plot") for i in images) + "</div>")
        self.md += [" ".join(self._img_md(i) for i in images), ""]

    def table(self, header: list[str], rows: list[list], collapsed: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(self._cell_html(c) for c in row) + "</tr>" for row in rows)
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        self.html.append(f"<details><summary>{html.escape(collapsed)}</summary>{table}</details>" if collapsed else table)
        # cells are rendered (escaped text, image links) before they go into the table
        md = md_table([md_escape(h) for h in header], [[self._cell_md(c) for c in row] for row in rows], escape=False)
        self.md += ([f"<details><summary>{collapsed}</summary>", ""] if collapsed else []) + md + [""]
        if collapsed:
            self.md += ["</details>", ""]

    def write(self, html_path: Path, md_path: Path, subtitle: str = "") -> None:
        sub = f'<p class="muted">{html.escape(subtitle)}</p>' if subtitle else ""
        page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}\n"
                + "\n".join(self.html) + "\n</body></html>\n")
        md = self.md[:2] + ([subtitle, ""] if subtitle else []) + self.md[2:]
        atomic_write_text(html_path, scrub_text(page))
        atomic_write_text(md_path, scrub_text("\n".join(md)))

    # --- cells, in each format ---
    def _img_html(self, img: Img, cls: str = "") -> str:
        width = f' width="{img.width}"' if img.width else ""
        return (f'<img class="{cls}" src="{data_uri(img.path)}" alt="{html.escape(img.alt)}"{width} '
                f'title="{html.escape(img.alt)}">')

    def _img_md(self, img: Img) -> str:
        rel = _relative(img.path, self.md_dir)
        return f'<img src="{rel}" alt="{img.alt}" width="{img.width}">' if img.width else f"![{img.alt}]({rel})"

    def _cell_html(self, cell) -> str:
        if cell is None:
            return '<td class="num">–</td>'
        if isinstance(cell, Img):
            return f"<td>{self._img_html(cell)}</td>"
        if isinstance(cell, Mark):
            cls = "" if cell.correct is None else (' class="ok"' if cell.correct else ' class="bad"')
            return f"<td{cls}>{html.escape(cell.text)}</td>"
        if _is_number(cell):
            return f'<td class="num">{html.escape(fmt(cell))}</td>'
        return f"<td>{html.escape(str(cell))}</td>"

    def _cell_md(self, cell) -> str:
        if cell is None:
            return "–"
        if isinstance(cell, Img):
            return self._img_md(cell)
        if isinstance(cell, Mark):
            mark = "" if cell.correct is None else (" ✓" if cell.correct else " ✗")
            return md_escape(cell.text) + mark
        return md_escape(fmt(cell) if _is_number(cell) else cell)
