"""One section list → Markdown (figures as relative links) and one self-contained HTML page (figures
inlined as base64 PNG data URIs, CSS inline, no external resource). Text may hold `code` spans."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Text:
    text: str
    strong: bool = False  # a callout: the verdict


@dataclass
class Heading:
    text: str  # a sub-heading inside a section


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    columns: list[str]
    rows: list[list]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Code:
    text: str
    lang: str = ""


Block = Text | Heading | Bullets | Table | Figure | Code


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


# ---- Markdown ----------------------------------------------------------------------------------------------


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"> **{block.text}**" if block.strong else block.text
    if isinstance(block, Heading):
        return f"### {block.text}"
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        head = "| " + " | ".join(_md_cell(c) for c in block.columns) + " |"
        rule = "|" + "|".join("---" for _ in block.columns) + "|"
        body = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join([head, rule, *body])
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.path.name})\n\n*{block.caption}*"
    return f"```{block.lang}\n{block.text.rstrip()}\n```"


def markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"# {title}", subtitle]
    for s in sections:
        parts.append(f"## {s.title}")
        parts.extend(_md_block(b) for b in s.blocks)
    return "\n\n".join(parts) + "\n"


# ---- HTML --------------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1d2329;
       max-width: 1040px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; } .sub { color: #5a6570; margin-top: 0; }
h2 { border-bottom: 2px solid #e3e8ee; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.3em; color: #33404d; }
nav { background: #f5f7fa; border-radius: 6px; padding: 0.5em 1em; font-size: 0.92em; }
nav a { margin-right: 1.2em; color: #2f6ea5; text-decoration: none; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e3e8ee; padding: 0.3em 0.8em; text-align: left; vertical-align: top; }
th { background: #f5f7fa; font-weight: 600; } tr:hover td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eef1f4; border-radius: 4px; }
figcaption { color: #5a6570; font-size: 0.88em; }
.verdict { background: #eef5fb; border-left: 4px solid #2f6ea5; padding: 0.7em 1em; font-weight: 600; }
code { background: #f2f4f7; padding: 0.05em 0.3em; border-radius: 3px; font-size: 0.92em; }
pre { background: #f5f7fa; padding: 0.8em 1em; border-radius: 6px; overflow-x: auto; font-size: 0.85em; }
"""
_NUM = re.compile(r"^[\s<>=+\-.,±%to\d]*\d[\s<>=+\-.,±%to\d]*$")  # 0.81 ± 0.02, +1.2 to +3.4, < 0.001, 3, 4


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _cell(tag: str, value) -> str:
    cls = ' class="num"' if tag == "td" and _NUM.match(str(value)) else ""
    return f"<{tag}{cls}>{_inline(value)}</{tag}>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f'<p class="verdict">{_inline(block.text)}</p>' if block.strong else f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Heading):
        return f"<h3>{_inline(block.text)}</h3>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "<tr>" + "".join(_cell("th", c) for c in block.columns) + "</tr>"
        body = "".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        alt = html.escape(block.caption, quote=True)
        return f'<figure><img src="{_data_uri(block.path)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    return f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"


def html_page(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>'
        + "".join(_html_block(b) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="sub">{_inline(subtitle)}</p><nav>{nav}</nav>{body}</body></html>\n'
    )
