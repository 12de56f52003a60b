"""Cleaning that changes a document's text but never drops it: Unicode and whitespace
normalisation, mojibake repair, and Project Gutenberg's header and footer.
"""

from __future__ import annotations

import re
import unicodedata

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize(text: str, fix_mojibake: bool = False) -> str:
    """NFC, one newline convention, no trailing spaces, at most one blank line in a row;
    with `fix_mojibake`, text decoded with the wrong codec is repaired first ("cafÃ©" -> "café")."""
    if fix_mojibake:
        import ftfy

        # Only the encoding repair: ftfy's other fixes (quotes, HTML entities, width) would
        # rewrite text that was never broken.
        text = ftfy.fix_text(
            text,
            unescape_html=False,
            uncurl_quotes=False,
            fix_latin_ligatures=False,
            fix_character_width=False,
            normalization=None,
        )
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


# "*** START OF THE PROJECT GUTENBERG EBOOK ... ***", and the older "*END*THE SMALL PRINT!" forms
_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.I | re.M,
)
_GUTENBERG_END = re.compile(
    r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$",
    re.I | re.M,
)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """The book without Project Gutenberg's licence header and footer, and whether any was
    found (a text without the markers is returned as it is)."""
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end() if start else 0)
    if not start and not end:
        return text, False
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    return body.strip(), True
