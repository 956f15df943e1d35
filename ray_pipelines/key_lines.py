"""One key per line: the format of list files, keep/ignore lists and the score job's kept.txt/ignored.txt.

A line is read as the key it holds, the spaces around it ignored; empty lines and lines starting with
``#`` are skipped. A key those rules would change (a file named ``#1 take.wav`` or `` intro.wav`` at the
input root, a line break in a name) is written as a JSON string (``"#1 take.wav"``), which reading turns
back into the key: kept.txt given as another job's ``keep_list`` names exactly the inputs it kept.
"""

from __future__ import annotations

import json

COMMENT = "#"
QUOTE = '"'


def key_line(key: str) -> str:
    """``key`` as one line (without its line break) that :func:`parse_key_line` reads back as ``key``."""
    plain = key == key.strip() and not key.startswith((COMMENT, QUOTE)) and "\n" not in key and "\r" not in key
    return key if plain else json.dumps(key, ensure_ascii=False)


def parse_key_line(line: str) -> str | None:
    """The key a line holds, or None for an empty line or a comment."""
    text = line.strip()
    if not text or text.startswith(COMMENT):
        return None
    if text.startswith(QUOTE):
        try:
            value = json.loads(text)
        except ValueError:  # a name that only starts with a quote, written by hand
            return text
        if isinstance(value, str):
            return value
    return text
