"""Markdown (for GitHub) and self-contained HTML (charts inline as base64) from the same blocks."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from medtune.report.document import Block, Bullets, Heading, Image, Paragraph, Table

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#<>!])")

HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", "Noto Sans CJK SC", "Noto Sans", sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.warning { background: #fff3cd; border: 2px solid #d4a017; padding: 0.8em 1em; font-weight: bold; }
img { max-width: 100%; }
"""


def markdown_text(text: str) -> str:
    """Escape everything GitHub Markdown would interpret (table pipes, HTML, emphasis, links)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {markdown_text(block.text)}")
        elif isinstance(block, Paragraph):
            parts.append(f"> **{markdown_text(block.text)}**" if block.warning else markdown_text(block.text))
        elif isinstance(block, Table):
            lines = [
                "| " + " | ".join(markdown_text(cell) for cell in block.headers) + " |",
                "|" + " --- |" * len(block.headers),
            ]
            lines += ["| " + " | ".join(markdown_text(cell) for cell in row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {markdown_text(item)}" for item in block.items))
        elif isinstance(block, Image):
            parts.append(f"![{markdown_text(block.alt)}]({block.file})")
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[Block], image_folder: Path, lang: str) -> str:
    """One file that opens offline: no scripts, no external resources, every text escaped."""
    title = next((block.text for block in blocks if isinstance(block, Heading)), "medtune report")
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(
                f'<p class="warning">{html.escape(block.text)}</p>'
                if block.warning
                else f"<p>{html.escape(block.text)}</p>"
            )
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.headers)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Image):
            encoded = base64.b64encode((image_folder / block.file).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{encoded}"></figure>')
    return (
        f'<!DOCTYPE html>\n<html lang="{html.escape(lang)}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
