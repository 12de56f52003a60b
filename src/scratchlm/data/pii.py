"""PII masking: e-mail addresses, phone numbers and IP addresses become placeholders.

The patterns are deliberately conservative: a phone number needs separators between its
digit groups (so years, prices and long ids are left alone), an IPv4 address needs four
octets of 0-255.
"""

from __future__ import annotations

import re
from collections import Counter

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}
PATTERNS = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "ip": re.compile(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    ),
    "phone": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,5}(?![\w])"
    ),
}


def mask_pii(text: str, kinds: list[str], counts: Counter) -> str:
    """`text` with each kind of PII in `kinds` replaced; `counts` gains how many of each."""
    for kind in ("email", "ip", "phone"):  # e-mails first: their digits are not phone numbers
        if kind in kinds:
            text, n = PATTERNS[kind].subn(PLACEHOLDERS[kind], text)
            if n:
                counts[f"pii_{kind}"] += n
    return text
