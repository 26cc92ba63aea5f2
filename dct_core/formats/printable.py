"""Text from users' files (labels, file names, records) made safe to print: control characters escaped, so a
planted label cannot clear a terminal or forge a line; long text shortened."""

from __future__ import annotations

import unicodedata


def printable(text: object, limit: int = 400) -> str:
    """``text`` on one line: control and format characters (newlines, ESC, bidi overrides) as \\x.. / \\u....
    escapes, and cut to ``limit`` characters with a count of the rest."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch)[0] == "C":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    line = "".join(out)
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line) - limit} more characters)"


def printable_lines(text: str) -> str:
    """Each line of a table or summary made printable (the line breaks themselves kept)."""
    return "\n".join(printable(line, 10_000) for line in text.splitlines())


def json_safe(value: object) -> object:
    """``value`` with NaN and infinite floats as None (JSON has no NaN; a file with one is not valid JSON)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: object, **kwargs) -> str:
    """Valid JSON always: non-finite numbers become null (json.dumps would write NaN)."""
    import json

    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
