"""Making user-controlled strings inert wherever review output lands.

Titles, authors, comments, adapter names and recipe text are typed by people (or come from files
people made). An adapter named `<script>` must stay text in the HTML report, must not become a tag
or a table break when pasted into a pull request, must not ping `@someone`, and must not send
escape sequences to a terminal. One function per destination, so each caller says where it writes.
"""
from __future__ import annotations

import html
import re
import unicodedata

# Markdown punctuation that can start emphasis, code, links, tables, headings or lists.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=:])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def html_text(value: object) -> str:
    """Text content or attribute value for HTML: `& < > " '` become entities."""
    return html.escape(str(value), quote=True)


def md_text(value: object) -> str:
    """Inline Markdown text that renders exactly as typed (GitHub-flavoured Markdown).

    HTML metacharacters become entities, Markdown punctuation is backslash-escaped (CommonMark
    allows this for any ASCII punctuation), `@` and `://` are broken with a zero-width joiner
    entity so no mention or autolink appears, and newlines become `<br>` so one value never
    opens a new block.
    """
    text = _CONTROL.sub("", str(value).replace("\r\n", "\n").replace("\r", "\n"))
    text = html.escape(text, quote=False)  # & < > first: their entities contain no escaped char
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = text.replace("@", "@&#8288;").replace("\\:/", "\\:&#8288;/")
    return text.replace("\n", "<br>")



def terminal_text(value: object, limit: int | None = None) -> str:
    """One line safe for a terminal: control characters (ANSI escapes included) dropped."""
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def terminal_block(value: object) -> str:
    """Multi-line text for a terminal: newlines kept, every other control character dropped."""
    return "\n".join(terminal_text(line) for line in str(value).splitlines())


def md_lines(value: object) -> str:
    """Like `md_text`, but newlines become Markdown hard breaks (for renderers without raw HTML)."""
    return "  \n".join(md_text(line) for line in str(value).replace("\r\n", "\n").split("\n"))
