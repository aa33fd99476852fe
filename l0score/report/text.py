"""Text for the page: visible whitespace and special tokens, numbers, word diffs, inline images.

Whatever returns Markup builds it from escaped pieces only, so model text can never become markup.
"""
from __future__ import annotations

import base64
import difflib
import re

from markupsafe import Markup, escape

_SPECIAL = re.compile(r"(<\|[^<>|\s]{1,40}\|>)")
_INVISIBLE = re.compile(r"([\s\x00-\x1f\x7f\u200b-\u200f\u2028\u2029\u2060\ufeff])")
_GLYPH = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def visible(text, whitespace: bool = True) -> Markup:
    """Escaped text with special tokens (<|...|>) marked and invisible characters shown as glyphs.

    whitespace=True shows every space as ␣ (candidates); False keeps spaces and line breaks, marking
    only the breaks with ⏎ (generations, shown pre-wrapped).
    """
    if text is None:
        return Markup('<span class="na">(no text)</span>')
    out = []
    for part in _SPECIAL.split(str(text)):
        if _SPECIAL.fullmatch(part):
            out.append(Markup('<span class="sp">{}</span>').format(part))
            continue
        for piece in _INVISIBLE.split(part):
            if not piece:
                continue
            if not _INVISIBLE.fullmatch(piece):
                out.append(escape(piece))
            elif not whitespace and piece == " ":
                out.append(Markup(" "))
            else:
                glyph = _GLYPH.get(piece, f"\\u{ord(piece):04x}")
                tail = "\n" if piece == "\n" and not whitespace else ""
                out.append(Markup('<span class="ws">{}</span>{}').format(glyph, tail))
    return Markup("").join(out)


def fmt_num(v, digits: int = 4) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, (int, float)) or v != v:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}"


_WORDS = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")  # a word or a mark with the whitespace before it


def diff_segments(a: str, b: str) -> tuple[list[tuple[bool, str]], list[tuple[bool, str]]]:
    """Word-level difflib diff of two generations: (changed?, text) runs for each side."""
    ta, tb = _WORDS.findall(a or ""), _WORDS.findall(b or "")
    sa, sb = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if i2 > i1:
            sa.append((op != "equal", "".join(ta[i1:i2])))
        if j2 > j1:
            sb.append((op != "equal", "".join(tb[j1:j2])))
    return sa, sb


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
