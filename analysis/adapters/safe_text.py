"""Adapter-supplied strings made inert for display: plain text, never Markdown, HTML or terminal codes.

An adapter's config and header are written by whoever made the file: `base_model_name_or_path`,
metadata values, module and tensor names, and the adapter's folder name reach the CLI, the app and
reports. Shown through a Markdown renderer, `[click](http://evil)`, `<img src=x onerror=...>`,
`$\\LaTeX$` or Streamlit's `:red[...]` directives would be interpreted; printed to a terminal,
ANSI escapes would be. Two helpers, one per destination:

- `plain_text(value)`: one line, control / bidi-override / zero-width characters removed, cut to a
  length. Use it with widgets that show text literally (`st.text`, `st.code`, dataframe cells,
  `st.error` bodies built with `markdown_text`) and for terminals.
- `markdown_text(value)`: `plain_text`, then every character a Markdown (CommonMark, GitHub or
  Streamlit flavour: LaTeX `$`, `:directive[...]`, HTML) renderer could act on is escaped, so the
  string renders exactly as written inside `st.markdown`, `st.warning`, `st.caption` etc.
"""
from __future__ import annotations

import html
import re
import unicodedata

#: Default display length: enough for any real model id or path, short enough for one line.
DEFAULT_LIMIT = 200
# ASCII punctuation a Markdown renderer may act on (CommonMark lets any ASCII punctuation be escaped).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=:$>^])")


def plain_text(value: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """One display line: newlines/tabs become spaces, control and format characters (ANSI escapes,
    bidi overrides, zero-width joiners) are dropped, and the result is cut to `limit` characters."""
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ").replace("\t", " ")
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def markdown_text(value: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """`plain_text` escaped for a Markdown renderer: shows literally, links/HTML/LaTeX never activate.

    `&`, `<`, `>` become HTML entities first (no tag can open), then Markdown punctuation is
    backslash-escaped; `@` and `://` get an invisible word joiner so no mention or autolink forms.
    """
    text = html.escape(plain_text(value, limit), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("@", "@&#8288;").replace("\\:/", "\\:&#8288;/")


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with '...': a hostile file must not produce a megabyte-long message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def short_repr(value: object, limit: int = 80) -> str:
    """repr of a value from a file (header, config), clipped for an error message."""
    return clip(repr(value), limit)


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object_pairs_hook: a key given twice is an error, not 'the last one wins'."""
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {short_repr(k)} appears twice")
        out[k] = v
    return out
