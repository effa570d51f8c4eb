"""A tiny, safe Markdown renderer for data cards: headings, lists, tables, paragraphs.

Every piece of text is HTML-escaped *before* any markup is added, so raw HTML in a data card
(``<script>``, ``<b>``) is shown as text, never interpreted.  Supported: ``#``-``######`` headings,
``-``/``*``/``+`` bullet lists, ``1.`` numbered lists, pipe tables with a ``---`` separator row,
paragraphs, and inline ``**bold**``, ``*italic*`` and ```code```.  Links and images are left as
text on purpose (the report must stay self-contained and offline).
"""

from __future__ import annotations

import html
import re

__all__ = ["markdown_text", "render_markdown"]

_MD_SPECIAL = {"\\": "\\\\", "|": "\\|", "*": "\\*", "_": "\\_", "`": "\\`", "<": "&lt;", ">": "&gt;",
               "&": "&amp;", "\n": " ", "\r": " "}


def markdown_text(x: object) -> str:
    """``x`` as inert Markdown text: HTML (``<script>``) becomes entities, Markdown markup and the table
    delimiter ``|`` are backslash-escaped, line breaks become spaces, so a user string (a cohort,
    label or group name) shows as written in any renderer and can neither break a table nor inject HTML.
    Brackets stay (intervals read ``0.81 [0.78, 0.84]``) but ``](`` is escaped, so no link forms."""
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in str(x)).replace("](", "]\\(")

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _inline(text: str) -> str:
    """Escape ``text`` then apply inline code, bold and italic."""
    out = html.escape(text, quote=True)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)
    return out


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def render_markdown(text: str, heading_offset: int = 2) -> str:
    """Render a safe subset of Markdown to HTML.

    Parameters
    ----------
    text : str
        Markdown source (untrusted: escaped first).
    heading_offset : int
        Added to each heading level (``#`` becomes ``<h3>`` with the default 2) so a data card
        nests under the report's own headings; capped at ``<h6>``.

    Returns
    -------
    str
        HTML fragment.
    """
    lines = (text or "").replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush_para() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p.strip()) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush_para()
            i += 1
            continue
        m = _HEADING.match(line)
        if m:
            flush_para()
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]):
            flush_para()
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            parts = ["<table><thead><tr>"]
            parts += [f"<th>{_inline(c)}</th>" for c in head]
            parts.append("</tr></thead><tbody>")
            for r in rows:
                parts.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
            parts.append("</tbody></table>")
            out.append("".join(parts))
            continue
        for pattern, tag in ((_BULLET, "ul"), (_NUMBERED, "ol")):
            if pattern.match(line):
                flush_para()
                items = []
                while i < len(lines) and pattern.match(lines[i]):
                    items.append(pattern.match(lines[i]).group(1))  # type: ignore[union-attr]
                    i += 1
                out.append(f"<{tag}>" + "".join(f"<li>{_inline(it)}</li>" for it in items) + f"</{tag}>")
                break
        else:
            para.append(line)
            i += 1
    flush_para()
    return "\n".join(out)
